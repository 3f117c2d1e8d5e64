package gateway

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/services"
)

// TestWaitAttndUnreachable: a gateway whose only attnd does not answer is not ready: WaitAttnd
// fails at its deadline saying which attnd it could not reach, rather than reporting serving.
func TestWaitAttndUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close() // nothing listens there now
	ctx := context.Background()
	reg := services.NewMemRegistry()
	if err := reg.Register(ctx, services.Instance{ID: "attnd-dead", Kind: services.KindAttnd, Addr: dead}); err != nil {
		t.Fatal(err)
	}
	s, err := New(ctx, Config{ModelDir: "../models/llada2-tiny-go", Listen: "127.0.0.1:0"}, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	id, err := s.WaitAttnd(wctx, 100*time.Millisecond)
	if err == nil {
		t.Fatalf("WaitAttnd found %q serving at a closed port", id)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "attnd-dead") {
		t.Errorf("WaitAttnd: %v, want a deadline error naming attnd-dead", err)
	}
}

// TestAttndRedialBackoff: the gateway re-dials an attnd whose connection failed at least every
// Config.Client.ReconnectBackoff, however long it has been failing (gRPC's own backoff grows to 2
// minutes, which left an attnd restarted after a long outage unused for as long). The "attnd" here
// accepts each connection and closes it at once, so every dial fails and is counted.
func TestAttndRedialBackoff(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	var dials atomic.Int32
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			c.Close()
		}
	}()
	ctx := context.Background()
	reg := services.NewMemRegistry()
	if err := reg.Register(ctx, services.Instance{ID: "attnd-flaky", Kind: services.KindAttnd, Addr: lis.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	const backoff = 100 * time.Millisecond
	s, err := New(ctx, Config{ModelDir: "../models/llada2-tiny-go", Listen: "127.0.0.1:0", Client: services.ClientConfig{ReconnectBackoff: backoff}}, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	const window = 3 * time.Second
	wctx, cancel := context.WithTimeout(ctx, window) // its health checks start the first dial
	defer cancel()
	if id, err := s.WaitAttnd(wctx, 200*time.Millisecond); err == nil {
		t.Fatalf("WaitAttnd found %q serving behind a listener that closes every connection", id)
	}
	// at most 1.2 × backoff apart (jitter): 25 dials in the window; gRPC's default backoff
	// (1 s, then 1.6 times more each time) makes 3
	if n := dials.Load(); n < 10 {
		t.Errorf("%d dials of a failing attnd in %v with Client.ReconnectBackoff %v, want at least 10", n, window, backoff)
	}
	t.Logf("%d dials in %v", dials.Load(), window)
}
