package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
)

// readBufGiB is the read-rate buffer: gib when set, else 4 GiB on a device backend (≥ 4 GiB, far
// beyond any L2) and 1 GiB on the host (far beyond any last-level cache).
func readBufGiB(be kernels.Backend, gib float64) float64 {
	if gib > 0 {
		return gib
	}
	if strings.HasPrefix(be.Name(), "cuda") {
		return 4
	}
	return 1
}

// measureReadRate is the backend's streaming-read rate in bytes/s, or 0 when reps is 0 or the
// backend cannot measure it.
func measureReadRate(be kernels.Backend, gib float64, reps int) (float64, error) {
	rm, ok := be.(kernels.ReadMeter)
	if !ok || reps == 0 {
		return 0, nil
	}
	if gib < 0 || reps < 0 {
		return 0, fmt.Errorf("--read-gib %v, --read-reps %d: want non-negative", gib, reps)
	}
	n := int64(readBufGiB(be, gib)*(1<<30)) &^ 63
	r, err := rm.ReadBandwidth(n, reps)
	if err != nil {
		return 0, fmt.Errorf("read rate: %w", err)
	}
	return r, nil
}

// setFloor fills the row's floor from the experts it touched, its tokens and context, the KV
// dtype and the read rate (bytes/s; 0: bytes only).
func (r *benchRow) setFloor(c *model.Config, kv kernels.DType, rate float64) error {
	sr, err := c.StepReadBytes(r.PerLayer, r.Batch*r.block, int64(r.Batch)*int64(r.Ctx), kv)
	if err != nil {
		return err
	}
	r.Touched, r.Possible, r.ReadGB = sr.Touched, sr.Possible, float64(sr.Total())/1e9
	if rate > 0 {
		r.ReadGBps = rate / 1e9
		r.FloorMs = float64(sr.Total()) / rate * 1000
		r.XFloor = r.MedianMs / r.FloorMs
	}
	return nil
}

// touchCounter is an ExpertRunner that records, per MoE layer, how many distinct experts the
// router chose, and then runs the layer with inner. Reading the ids waits for the device, so it
// is for one untimed counting step.
type touchCounter struct {
	inner model.ExpertRunner
	be    kernels.Backend
	moe   []int
	seen  map[int]map[int32]bool
}

func (t *touchCounter) Dispatch(ctx context.Context, layer int, x, ids, weights *kernels.Tensor) (func(*kernels.Tensor) error, error) {
	h := make([]int32, ids.Numel())
	if err := t.be.Download(h, ids); err != nil {
		return nil, fmt.Errorf("count experts of layer %d: %w", layer, err)
	}
	if t.seen == nil {
		t.seen = map[int]map[int32]bool{}
	}
	s := t.seen[layer]
	if s == nil {
		s = map[int32]bool{}
		t.seen[layer] = s
	}
	for _, e := range h {
		if e >= 0 {
			s[e] = true
		}
	}
	return t.inner.Dispatch(ctx, layer, x, ids, weights)
}

// counts is the distinct experts touched per MoE layer, in MoELayers order.
func (t *touchCounter) counts() []int {
	out := make([]int, len(t.moe))
	for i, l := range t.moe {
		out[i] = len(t.seen[l])
	}
	return out
}
