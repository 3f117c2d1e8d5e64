package attnd_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// exclusive is the CPU backend presented as one that is not kernels.Concurrent (as CUDA is): it
// counts the ops running at once, holding each a little so that an overlap cannot go unseen.
type exclusive struct {
	kernels.Backend // promotes the ops, but not Concurrent
	now, peak       atomic.Int32
}

func (e *exclusive) enter() func() {
	n := e.now.Add(1)
	for p := e.peak.Load(); n > p && !e.peak.CompareAndSwap(p, n); p = e.peak.Load() {
	}
	time.Sleep(200 * time.Microsecond)
	return func() { e.now.Add(-1) }
}

func (e *exclusive) MatMul(dst, x, w *kernels.Tensor) error {
	defer e.enter()()
	return e.Backend.MatMul(dst, x, w)
}

func (e *exclusive) Attention(out, qkv *kernels.Tensor, b *kernels.Batch, layer int, p kernels.AttnParams) error {
	defer e.enter()()
	return e.Backend.Attention(out, qkv, b, layer, p)
}

func (e *exclusive) Download(dst any, t *kernels.Tensor) error {
	defer e.enter()()
	return e.Backend.Download(dst, t)
}

func (e *exclusive) Upload(t *kernels.Tensor, src any) error {
	defer e.enter()()
	return e.Backend.Upload(t, src)
}

// TestMicroBatchesSerialiseOnExclusiveBackend: attnd runs its two micro-batches on a backend that
// is not kernels.Concurrent one at a time (no two ops ever overlap), and still answers every
// session.
func TestMicroBatchesSerialiseOnExclusiveBackend(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", []int{0, 1, 2, 3, 4, 5, 6, 7})
	startExpertd(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
	be := &exclusive{Backend: cpu.New()}
	a, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, MicroBatches: 2,
		NewBackend: func() (kernels.Backend, error) { return be, nil }})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	req := &pb.StepRequest{}
	for i := range 4 {
		id := fmt.Sprint("s", i)
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 32}); err != nil {
			t.Fatal(err)
		}
		req.Sessions = append(req.Sessions, &pb.SessionStep{SessionId: id, Tokens: []int32{952, 2311, 449, int32(945 + i)},
			OutRows: 4, TopK: 1, InvTemperature: 1})
	}
	be.peak.Store(0)
	resp, err := c.Step(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetResults()); n != 4 {
		t.Fatalf("%d results, want 4", n)
	}
	if p := be.peak.Load(); p != 1 {
		t.Errorf("%d backend ops ran at once on a backend that is not kernels.Concurrent, want 1", p)
	}
}
