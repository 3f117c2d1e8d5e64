package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/tlstest"
)

// startUp starts `dlmesh up args…` and waits (90 s at most) until its stderr holds ready; it
// returns the stderr so far, and SIGINTs the process at cleanup (it must then exit 0).
func startUp(t *testing.T, bin, ready string, args ...string) *syncBuffer {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"up"}, args...)...)
	var stderr syncBuffer
	cmd.Stderr, cmd.Stdout = &stderr, nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("up after SIGINT: %v\n%s", err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			t.Errorf("up still running 30 s after SIGINT")
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(stderr.String(), ready) {
		select {
		case err := <-done:
			t.Fatalf("up exited (%v) before %q:\n%s", err, ready, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("up not ready after 90 s:\n%s", stderr.String())
		}
	}
	return &stderr
}

// match is the first group of re in s, failing the test when there is none.
func match(t *testing.T, re, s string) string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no %s in:\n%s", re, s)
	}
	return m[1]
}

// TestUpWithTLS runs `dlmesh up` with --tls-cert/--tls-key/--tls-ca, an API key and a metrics
// endpoint, generating one prompt through its own TLS gateway: then `dlmesh generate` needs TLS
// and the key, the HTTP API answers HTTPS, the services inside refuse a caller without a
// certificate of the CA (mTLS) and answer a member, and /metrics answers only a client
// certificate. Without --tls-ca the mesh inside trusts --tls-cert itself; --tls-ca alone is
// refused.
func TestUpWithTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts the mesh; skipped with -short")
	}
	bin := buildBinary(t)
	model := filepath.Join("..", "..", "models", "llada2-tiny-go")
	ca := tlstest.NewCA(t, "mesh")
	cert, key := ca.Issue(t, "up")
	const apiKey = "sk-up-tls"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("with ca", func(t *testing.T) {
		stderr := startUp(t, bin, "serving; try:", "--model", model, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
			"--metrics-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca.File, "--api-key", apiKey,
			"--mode", "s", "--gen", "8", "--json", "func main() {")
		log := stderr.String()
		gw := match(t, `gateway\s+(127\.0\.0\.1:\d+)`, log)
		api := match(t, `openai\s+https://(127\.0\.0\.1:\d+)/v1`, log)
		attnd := match(t, `attnd\s+(127\.0\.0\.1:\d+)`, log)
		expertd := match(t, `expertd\s+(127\.0\.0\.1:\d+)`, log)
		metrics := match(t, `url=https://(127\.0\.0\.1:\d+)/metrics`, log)
		if !strings.Contains(log, "--tls-ca "+ca.File) {
			t.Errorf("the hint does not name --tls-ca %s:\n%s", ca.File, log)
		}

		out, err := exec.CommandContext(ctx, bin, "generate", "--addr", gw, "--tls-ca", ca.File, "--api-key", apiKey, "--mode", "s", "--gen", "8", "--json", "func main() {").Output()
		var got struct {
			IDs []int32 `json:"ids"`
		}
		if err != nil || json.Unmarshal(out, &got) != nil || len(got.IDs) == 0 {
			t.Errorf("generate over tls with the key: %v %s (%s)", err, out, exitStderr(err))
		}
		for name, args := range map[string][]string{
			"no api key": {"--tls-ca", ca.File},
			"plaintext":  {"--api-key", apiKey},
		} {
			if out, err := exec.CommandContext(ctx, bin, append([]string{"generate", "--addr", gw, "--gen", "8", "func main() {"}, args...)...).Output(); err == nil {
				t.Errorf("generate with %s succeeded: %s", name, out)
			}
		}

		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+api+"/v1/models", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+apiKey)
		if resp, err := httpsClient(t, ca.File, "", "").Do(req); err != nil {
			t.Errorf("https /v1/models: %v", err)
		} else if resp.Body.Close(); resp.StatusCode != http.StatusOK {
			t.Errorf("https /v1/models: %s", resp.Status)
		}

		// the services inside: mTLS
		member, err := services.NewTLS(services.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.File})
		if err != nil {
			t.Fatal(err)
		}
		noCert, err := services.NewTLS(services.TLSConfig{CAFile: ca.File})
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			tls  *services.TLS
			want codes.Code
		}{{"member", member, codes.InvalidArgument}, {"no certificate", noCert, codes.Unauthenticated}} {
			acc, err := services.Dial(attnd, services.ClientConfig{TLS: tc.tls})
			if err != nil {
				t.Fatal(err)
			}
			ecc, err := services.Dial(expertd, services.ClientConfig{TLS: tc.tls})
			if err != nil {
				t.Fatal(err)
			}
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			_, aerr := pb.NewAttentionClient(acc).Open(cctx, &pb.OpenRequest{})
			_, eerr := pb.NewExpertsClient(ecc).Compute(cctx, &pb.ExpertsRequest{})
			ccancel()
			acc.Close()
			ecc.Close()
			if status.Code(aerr) != tc.want || status.Code(eerr) != tc.want {
				t.Errorf("%s: attnd Open %v, expertd Compute %v; want %v", tc.name, aerr, eerr, tc.want)
			}
		}

		mfs, err := scrapeURL(httpsClient(t, ca.File, cert, key), "https://"+metrics+"/metrics")
		if err != nil {
			t.Errorf("metrics with a client certificate: %v", err)
		} else if len(mfs["dlmesh_sessions"].GetMetric()) == 0 {
			t.Errorf("metrics: no dlmesh_sessions among %d families", len(mfs))
		}
		if _, err := scrapeURL(httpsClient(t, ca.File, "", ""), "https://"+metrics+"/metrics"); err == nil {
			t.Error("metrics answered a client without a certificate")
		}
		if _, err := scrapeURL(&http.Client{Timeout: 5 * time.Second}, "http://"+metrics+"/metrics"); err == nil {
			t.Error("metrics answered plain http")
		}
	})

	t.Run("certificate without ca", func(t *testing.T) {
		// the generation goes through the TLS gateway; inside, every service verifies the others
		// against the certificate itself
		out, err := exec.CommandContext(ctx, bin, "up", "--model", model, "--listen", "127.0.0.1:0", "--http-listen", "",
			"--tls-cert", cert, "--tls-key", key, "--mode", "s", "--gen", "8", "--json", "--exit", "func main() {").Output()
		var got struct {
			IDs []int32 `json:"ids"`
		}
		if err != nil || json.Unmarshal(out, &got) != nil || len(got.IDs) == 0 {
			t.Errorf("up --tls-cert --exit PROMPT: %v %s (%s)", err, out, exitStderr(err))
		}
	})

	t.Run("ca alone", func(t *testing.T) {
		_, err := exec.CommandContext(ctx, bin, "up", "--model", model, "--listen", "127.0.0.1:0", "--http-listen", "", "--tls-ca", ca.File, "--exit", "x").Output()
		if err == nil || !strings.Contains(exitStderr(err), "--tls-cert") {
			t.Errorf("up --tls-ca alone: %v (%s), want an error naming --tls-cert", err, exitStderr(err))
		}
	})
}
