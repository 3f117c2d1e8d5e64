package attnd_test

import (
	"context"
	"fmt"
	"runtime/metrics"
	"testing"

	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// TestIdleReturnsMemory: when the last session closes, the freed KV caches go back to the OS
// (the runtime's released heap grows by most of what they held).
func TestIdleReturnsMemory(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", model.AllExperts(16))
	_, c, _ := startAttnd(t, reg)
	ctx := context.Background()
	const n, capLen = 4, 2048
	for i := range n {
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: fmt.Sprint("big-", i), Capacity: capLen}); err != nil {
			t.Fatal(err)
		}
	}
	before := releasedBytes()
	for i := range n {
		if _, err := c.Close(ctx, &pb.CloseRequest{SessionId: fmt.Sprint("big-", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// tiny model: 8 layers · K and V · 2 kv heads · 64 dims · 4 bytes per position
	kv := uint64(n * capLen * 8 * 2 * 2 * 64 * 4)
	if got := releasedBytes() - before; got < kv/2 {
		t.Errorf("released %d MiB after the last close, want at least %d MiB (half the KV)", got>>20, kv>>21)
	}
}

func releasedBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
