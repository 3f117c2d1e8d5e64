// Package consultest starts a real Consul dev agent on loopback for tests.
//
// The binary is $DLMESH_CONSUL_BIN, else `consul` on PATH, else the cache .ci/run fills
// (/var/cache/dlmesh/consul/consul). When none is found a test is skipped with a message saying
// how to install one — unless DLMESH_REQUIRE_CONSUL=1 (CI sets it), where it fails.
//
// Who may import: tests.
package consultest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// CacheBin is where .ci/run installs the agent.
const CacheBin = "/var/cache/dlmesh/consul/consul"

// Binary finds the consul binary, or returns "".
func Binary() string {
	if b := os.Getenv("DLMESH_CONSUL_BIN"); b != "" {
		return b
	}
	if b, err := exec.LookPath("consul"); err == nil {
		return b
	}
	if _, err := os.Stat(CacheBin); err == nil {
		return CacheBin
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		b := filepath.Join(filepath.Dir(file), "..", "..", ".ci", "cache", "consul", "consul")
		if _, err := os.Stat(b); err == nil {
			return b
		}
	}
	return ""
}

// Agent is a running dev agent.
type Agent struct {
	Addr string // HTTP API address, host:port
}

// Start starts a dev agent for the test and stops it in Cleanup.
func Start(tb testing.TB) *Agent {
	tb.Helper()
	bin := Binary()
	if bin == "" {
		msg := "consultest: no consul binary (set DLMESH_CONSUL_BIN, put consul on PATH, or run: bash ../shared/tools/consul/install-consul.sh /var/cache/dlmesh/consul)"
		if os.Getenv("DLMESH_REQUIRE_CONSUL") == "1" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	ports := freePorts(tb, 4)
	dir := tb.TempDir()
	cmd := exec.Command(bin, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]), "-grpc-port", "-1", "-grpc-tls-port", "-1", "-dns-port", "-1",
		"-server-port", strconv.Itoa(ports[1]), "-serf-lan-port", strconv.Itoa(ports[2]), "-serf-wan-port", strconv.Itoa(ports[3]),
		"-data-dir", dir, "-log-level", "warn")
	logf, err := os.Create(filepath.Join(dir, "consul.log"))
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatalf("consultest: start %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt) // a dev agent exits 1 on a signal: normal
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	a := &Agent{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))}
	cfg := api.DefaultConfig()
	cfg.Address = a.Addr
	c, err := api.NewClient(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if l, err := c.Status().Leader(); err == nil && l != "" {
			return a
		}
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(dir, "consul.log"))
			tb.Fatalf("consultest: agent exited:\n%s", b)
		case <-ctx.Done():
			tb.Fatal("consultest: no leader after 30 s")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// String describes the agent.
func (a *Agent) String() string { return fmt.Sprintf("consul dev agent at %s", a.Addr) }
