package cuda

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
)

// fakeBlas is a cuBLAS whose calls all succeed, doing nothing.
func fakeBlas() *cublas {
	return &cublas{
		create:       func(h *uintptr) cuResult { *h = 0xb1; return cudaSuccess },
		destroy:      func(uintptr) cuResult { return cudaSuccess },
		setStream:    func(_, _ uintptr) cuResult { return cudaSuccess },
		setWorkspace: func(_, _ uintptr, _ uint64) cuResult { return cudaSuccess },
		setMathMode:  func(uintptr, int32) cuResult { return cudaSuccess },
		gemmEx: func(uintptr, int32, int32, int32, int32, int32, unsafe.Pointer, uintptr, int32, int32,
			uintptr, int32, int32, unsafe.Pointer, uintptr, int32, int32, int32, int32) cuResult {
			return cudaSuccess
		},
	}
}

// hopLog is a remote expert runner that writes its hops into the same log as the fake
// driver's graph launches, so the test sees their order.
type hopLog struct {
	log *[]string
}

func (h hopLog) Dispatch(_ context.Context, layer int, _, _, _ *kernels.Tensor) (func(*kernels.Tensor) error, error) {
	*h.log = append(*h.log, fmt.Sprintf("dispatch %d", layer))
	return func(*kernels.Tensor) error { *h.log = append(*h.log, fmt.Sprintf("wait %d", layer)); return nil }, nil
}

// TestStepSegmentsBetweenHops: with remote experts, a prepared step on the CUDA backend is
// recorded as one graph per segment between expert hops, and Run replays it as graph launches
// with the hops between them, in the model's order, launching no kernel itself.
func TestStepSegmentsBetweenHops(t *testing.T) {
	f := &fakeDriver{}
	d := f.table(0)
	var log []string
	d.cuGraphLaunch = func(exec, _ uintptr) cuResult { log = append(log, "graph"); return cudaSuccess }
	graphs := 0
	d.cuGraphInstantiateWithFlags = func(e *uintptr, _ uintptr, _ uint64) cuResult {
		graphs++
		*e = uintptr(0xa00 + graphs)
		return cudaSuccess
	}
	b, err := newBackend(d, fakeBlas(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	m, err := model.Load(ctx, "../../models/llada2-tiny-go", b, model.LoadOptions{Attention: true, F32Weights: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	cache, err := m.NewCache(64)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Free()
	seqs := []model.StepSeq{{Cache: cache, Tokens: make([]int32, 32), OutRows: 32, TopK: 2}}
	p, err := m.PrepareWith(seqs, 32, model.StepOptions{Experts: hopLog{&log}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	launchesBefore := len(f.launches)
	captured, err := p.Capture(ctx)
	if err != nil || !captured {
		t.Fatalf("Capture: %v, %v", captured, err)
	}
	if len(log) != 0 {
		t.Fatalf("the recording made hops or launched graphs: %v", log)
	}
	var moe []int
	for l := m.Cfg.FirstKDense; l < m.Cfg.Layers; l++ {
		moe = append(moe, l)
	}
	if want := 2*len(moe) + 1; f.captures != want || graphs != want {
		t.Fatalf("%d captures, %d graphs for %d MoE layers: want %d segments", f.captures, graphs, len(moe), want)
	}
	recorded := len(f.launches) - launchesBefore
	if recorded == 0 {
		t.Fatal("no kernel recorded")
	}
	var want []string
	want = append(want, "graph")
	for _, l := range moe {
		want = append(want, fmt.Sprintf("dispatch %d", l), "graph", fmt.Sprintf("wait %d", l), "graph")
	}
	for run := range 2 {
		log = log[:0]
		before := len(f.launches)
		if _, err := p.Run(ctx); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(log, want) {
			t.Fatalf("run %d: %v\nwant %v", run, log, want)
		}
		if n := len(f.launches) - before; n != 0 {
			t.Fatalf("run %d launched %d kernels besides the graphs (the recording held %d)", run, n, recorded)
		}
		if err := p.Reuse(seqs, model.StepOptions{Experts: hopLog{&log}}); err != nil {
			t.Fatal(err)
		}
	}
}
