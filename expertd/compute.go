package expertd

import (
	"context"
	"fmt"

	"github.com/dlmesh/dlmesh/kernels"
)

// batch is one validated Compute request in host memory.
type batch struct {
	layer, rows, topK int
	x                 []float32 // [rows·hidden]
	ids               []int32   // [rows·topK], each -1 or a held expert
	weights           []float32 // [rows·topK]
}

// compute runs y[t] = Σ_j weights[t,j]·FFN_{ids[t,j]}(x[t]) for the batch's rows in one
// ExpertsFFN call (the backend batches the rows per expert) and returns y [rows·hidden].
// The backend is used by one goroutine at a time.
func (s *Server) compute(ctx context.Context, b *batch) ([]float32, error) {
	set := s.m.Experts.Layers[b.layer]
	H := s.m.Cfg.Hidden
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	be := s.m.Be
	var ts []*kernels.Tensor
	defer func() {
		for _, t := range ts {
			be.Free(t)
		}
	}()
	alloc := func(dt kernels.DType, shape ...int) (*kernels.Tensor, error) {
		t, err := be.Alloc(dt, shape...)
		if err == nil {
			ts = append(ts, t)
		}
		return t, err
	}
	x, err := alloc(kernels.F32, b.rows, H)
	if err != nil {
		return nil, fmt.Errorf("expertd: alloc: %w", err)
	}
	ids, err := alloc(kernels.I32, b.rows, b.topK)
	if err != nil {
		return nil, fmt.Errorf("expertd: alloc: %w", err)
	}
	w, err := alloc(kernels.F32, b.rows, b.topK)
	if err != nil {
		return nil, fmt.Errorf("expertd: alloc: %w", err)
	}
	dst, err := alloc(kernels.F32, b.rows, H)
	if err != nil {
		return nil, fmt.Errorf("expertd: alloc: %w", err)
	}
	y := make([]float32, b.rows*H)
	for _, step := range []func() error{
		func() error { return be.Upload(x, b.x) },
		func() error { return be.Upload(ids, b.ids) },
		func() error { return be.Upload(w, b.weights) },
		func() error { return be.ExpertsFFN(dst, x, ids, w, set) },
		func() error { return be.Download(y, dst) },
	} {
		if err := step(); err != nil {
			return nil, fmt.Errorf("expertd: layer %d: %w", b.layer, err)
		}
	}
	return y, nil
}
