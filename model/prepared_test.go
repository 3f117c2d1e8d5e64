package model_test

import (
	"context"
	"errors"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
)

// hopCounter is an expert runner that runs the model's own experts and counts the hops, as a
// remote runner would see them.
type hopCounter struct {
	local             model.LocalExperts
	dispatches, waits int
}

func (h *hopCounter) Dispatch(ctx context.Context, layer int, x, ids, w *kernels.Tensor) (func(*kernels.Tensor) error, error) {
	h.dispatches++
	wait, err := h.local.Dispatch(ctx, layer, x, ids, w)
	if err != nil {
		return nil, err
	}
	return func(dst *kernels.Tensor) error { h.waits++; return wait(dst) }, nil
}

// TestPreparedReuseMatchesStep: the denoising steps of a block run on one Prepared (Reuse with
// each step's tokens) give exactly what a fresh Step per step gives, with an expert runner of
// its own (attnd's remote case) and after a prefill of the prompt.
func TestPreparedReuseMatchesStep(t *testing.T) {
	m := loadTiny(t, fullOpts())
	ctx := context.Background()
	c := loadForwardCases(t)[0]
	const bl = 32
	prompt := c.IDs[:bl] // one block of prompt, then a block being denoised
	blockSteps := [][]int32{c.IDs[bl : 2*bl], slices.Repeat([]int32{c.IDs[0]}, bl), c.IDs[bl : 2*bl]}

	newCache := func() *model.Cache {
		cache, err := m.NewCache(4 * bl)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cache.Free)
		if _, err := m.Step(ctx, []model.StepSeq{{Cache: cache, Tokens: prompt}}, bl, model.StepOptions{}); err != nil {
			t.Fatal(err)
		}
		return cache
	}
	fresh, reused := newCache(), newCache()
	seq := func(cache *model.Cache, tokens []int32) []model.StepSeq {
		return []model.StepSeq{{Cache: cache, Pos: bl, Tokens: tokens, OutRows: bl, TopK: 4, InvTemp: 1.25}}
	}
	run := &hopCounter{local: model.LocalExperts{M: m}}
	// exact on the CPU; on CUDA the replayed graphs run the same kernels, but a kernel that
	// reduces with atomics may order a sum differently
	tol := 0.0
	if os.Getenv("DLMESH_TEST_BACKEND") == "cuda" {
		tol = 1e-4
	}
	var p *model.Prepared
	for i, tokens := range blockSteps {
		want, err := m.Step(ctx, seq(fresh, tokens), bl, model.StepOptions{})
		if err != nil {
			t.Fatal(err)
		}
		opt := model.StepOptions{Experts: run}
		if p == nil {
			if p, err = m.PrepareWith(seq(reused, tokens), bl, opt); err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if _, err := p.Capture(ctx); err != nil {
				t.Fatal(err)
			}
		} else if err := p.Reuse(seq(reused, tokens), opt); err != nil {
			t.Fatal(err)
		}
		got, err := p.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !sameOut(got[0], want[0], tol) {
			t.Fatalf("step %d: the prepared step's candidates differ from a fresh Step's (tolerance %g)", i, tol)
		}
		if reused.Len != fresh.Len {
			t.Fatalf("step %d: cache length %d after the prepared step, %d after Step", i, reused.Len, fresh.Len)
		}
	}
	moe := m.Cfg.Layers - m.Cfg.FirstKDense
	if run.dispatches != len(blockSteps)*moe || run.waits != run.dispatches {
		t.Fatalf("%d dispatches and %d waits for %d steps of %d MoE layers", run.dispatches, run.waits, len(blockSteps), moe)
	}
	// the block committed, the next step has another shape: it does not fit
	next := seq(reused, blockSteps[0])
	next[0].Pos += bl
	if p.Fits(next, bl, model.StepOptions{Experts: run}) {
		t.Fatal("a step at another position fits the prepared step")
	}
	if err := p.Reuse(next, model.StepOptions{Experts: run}); !errors.Is(err, model.ErrShape) {
		t.Fatalf("Reuse of another shape: %v, want ErrShape", err)
	}
	other := seq(reused, blockSteps[0])
	other[0].TopK = 1
	if p.Fits(other, bl, model.StepOptions{Experts: run}) {
		t.Fatal("a step asking for other LM-head candidates fits the prepared step")
	}
}

// sameOut reports whether two LM-head results have the same candidates and logits and
// log-sum-exps within tol (0: bit-identical).
func sameOut(a, b model.StepOut, tol float64) bool {
	if !slices.Equal(a.IDs, b.IDs) || len(a.Logits) != len(b.Logits) || len(a.LSE) != len(b.LSE) {
		return false
	}
	near := func(x, y []float32) bool {
		for i := range x {
			if x[i] != y[i] && !(tol > 0 && math.Abs(float64(x[i]-y[i])) <= tol) {
				return false
			}
		}
		return true
	}
	return near(a.Logits, b.Logits) && near(a.LSE, b.LSE)
}
