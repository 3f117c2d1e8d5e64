package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/services/tlstest"
)

// TestMeshAsProcessesWithMTLS starts the four processes with --tls-cert/--tls-key/--tls-ca
// (TLS everywhere, mTLS between the services), generates through `dlmesh generate --tls-ca` as
// a user without a certificate, and checks that `dlmesh health` needs TLS but no certificate
// while expertd's Info (via `dlmesh status`-style dialling) refuses a client without one.
func TestMeshAsProcessesWithMTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts four processes; skipped with -short")
	}
	bin := buildBinary(t)
	model := filepath.Join("..", "..", "models", "llada2-tiny-go")
	addrRE := regexp.MustCompile(`(127\.0\.0\.1:\d+)`)
	ca := tlstest.NewCA(t, "mesh")
	cert, key := ca.Issue(t, "member")
	tlsArgs := []string{"--tls-cert", cert, "--tls-key", key, "--tls-ca", ca.File}
	with := func(args ...string) []string { return append(args, tlsArgs...) }

	e0 := startProc(t, bin, addrRE, "expertd serving", with("expertd", "--model", model, "--experts", "0-7")...)
	e1 := startProc(t, bin, addrRE, "expertd serving", with("expertd", "--model", model, "--experts", "8-15")...)
	at := startProc(t, bin, addrRE, "attnd serving", with("attnd", "--model", model, "--expertd", e0.addr+","+e1.addr)...)
	gw := startProc(t, bin, addrRE, "gateway serving", with("gateway", "--model", model, "--attnd", at.addr, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")...)

	f := fixtures.LoadGen(t)
	c := f.Cases[3]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "generate", "--addr", gw.addr, "--tls-ca", ca.File, "--mode", c.Mode, "--gen", "32", "--json", c.Prompt).Output()
	if err != nil {
		t.Fatalf("generate over tls: %v (%s)", err, exitStderr(err))
	}
	var got struct {
		IDs []int32 `json:"ids"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if n := min(len(got.IDs), len(c.IDs)); n == 0 || !slices.Equal(got.IDs[:n], c.IDs[:n]) {
		t.Errorf("ids over tls %v, reference %v", got.IDs, c.IDs)
	}
	if _, err := exec.CommandContext(ctx, bin, "generate", "--addr", gw.addr, "--gen", "8", c.Prompt).Output(); err == nil {
		t.Error("plaintext generate against a TLS gateway succeeded")
	}
	// health: TLS without a client certificate is enough (probes, Consul)
	if out, err := exec.CommandContext(ctx, bin, "health", "--addr", e0.addr, "--tls-ca", ca.File).Output(); err != nil || !strings.Contains(string(out), "SERVING") {
		t.Errorf("health over tls without a certificate: %v %s (%s)", err, out, exitStderr(err))
	}
	if _, err := exec.CommandContext(ctx, bin, "health", "--addr", e0.addr).Output(); err == nil {
		t.Error("plaintext health against a TLS expertd succeeded")
	}
}
