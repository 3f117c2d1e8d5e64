package gateway

import (
	"context"
	"errors"
	"net"
	"strings"
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
