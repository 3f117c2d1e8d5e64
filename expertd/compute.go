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

// scratch holds the host and backend buffers one caller (a Compute call, or one ComputeStream
// for all its requests) reuses from request to request.
type scratch struct {
	b       batch
	x, w, y []float32
	ids     []int32
	// keep keeps the backend tensors between requests (a stream frees them at its end)
	keep bool
	// backend tensors for rows rows: x, ids, weights and dst
	rows              int
	tx, tid, tw, tdst *kernels.Tensor
}

// grow returns (*buf)[:n], reallocating when the capacity is short.
func grow[T any](buf *[]T, n int) []T {
	if cap(*buf) < n {
		*buf = make([]T, n)
	}
	*buf = (*buf)[:n]
	return *buf
}

// tensors returns sc's backend tensors for b, allocated again when the row count changed. The
// backend lock is held.
func (sc *scratch) tensors(be kernels.Backend, b *batch, H int) error {
	if sc.tx != nil && sc.rows == b.rows && sc.tid.Cols() == b.topK {
		return nil
	}
	sc.free(be)
	var err error
	alloc := func(dt kernels.DType, shape ...int) *kernels.Tensor {
		if err != nil {
			return nil
		}
		var t *kernels.Tensor
		t, err = be.Alloc(dt, shape...)
		return t
	}
	sc.tx, sc.tid = alloc(kernels.F32, b.rows, H), alloc(kernels.I32, b.rows, b.topK)
	sc.tw, sc.tdst = alloc(kernels.F32, b.rows, b.topK), alloc(kernels.F32, b.rows, H)
	if err != nil {
		sc.free(be)
		return fmt.Errorf("expertd: alloc: %w", err)
	}
	sc.rows = b.rows
	return nil
}

// free releases sc's backend tensors (nil ones are ignored).
func (sc *scratch) free(be kernels.Backend) {
	for _, t := range []*kernels.Tensor{sc.tx, sc.tid, sc.tw, sc.tdst} {
		if t != nil {
			be.Free(t)
		}
	}
	sc.tx, sc.tid, sc.tw, sc.tdst, sc.rows = nil, nil, nil, nil, 0
}

// compute runs y[t] = Σ_j weights[t,j]·FFN_{ids[t,j]}(x[t]) for the batch's rows in one
// ExpertsFFN call (the backend batches the rows per expert) into y [rows·hidden], on sc's
// backend tensors. The backend is used by one goroutine at a time.
func (s *Server) compute(ctx context.Context, b *batch, y []float32, sc *scratch) error {
	set := s.m.Experts.Layers[b.layer]
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	be := s.m.Be
	if err := sc.tensors(be, b, s.m.Cfg.Hidden); err != nil {
		return err
	}
	if !sc.keep {
		defer sc.free(be)
	}
	for _, step := range []func() error{
		func() error { return be.Upload(sc.tx, b.x) },
		func() error { return be.Upload(sc.tid, b.ids) },
		func() error { return be.Upload(sc.tw, b.weights) },
		func() error { return be.ExpertsFFN(sc.tdst, sc.tx, sc.tid, sc.tw, set) },
		func() error { return be.Download(y, sc.tdst) },
	} {
		if err := step(); err != nil {
			return fmt.Errorf("expertd: layer %d: %w", b.layer, err)
		}
	}
	return nil
}
