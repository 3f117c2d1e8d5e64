package model

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/dlmesh/dlmesh/kernels"
)

// Prepared is a step planned once and run many times on the same buffers. The benchmarks of
// the real shapes run it, and attnd keeps one per batch of sessions for as long as their steps
// keep one shape: the denoising steps of a block feed the same positions with new tokens
// (Reuse), so the plan's buffers, its batch and its graphs serve every step of the block.
//
// On a backend that records graphs (CUDA, kernels.Grapher) Capture records the step. With the
// model's own experts the whole step, every layer and the LM head, is one graph replayed with
// one launch. With remote experts (StepOptions.Experts) the step is cut at its expert hops
// (kernels.SegmentGrapher): one graph from the embedding up to the first MoE layer's router;
// per MoE layer one for the shared expert (what runs between Dispatch and wait) and one from
// the routed sums' add up to the next MoE layer's router (the last one ends with the LM head).
// Run launches the segments in order and makes each hop on the host between two launches, so
// a layer costs two graph launches and its hop, never a launch per kernel.
type Prepared struct {
	m     *Model
	pl    *stepPlan
	opt   StepOptions
	graph kernels.Graph   // the whole step (local experts)
	segs  []kernels.Graph // remote experts: the segments, len(hops)+1
	hops  []hop           // what Run does after segs[i]
}

// hop is the host work between two segments: the Dispatch of a MoE layer, or its wait.
type hop struct {
	layer int
	wait  bool
}

// Prepare plans a step over seqs with the model's own routed experts.
func (m *Model) Prepare(seqs []StepSeq, blockLen int) (*Prepared, error) {
	return m.PrepareWith(seqs, blockLen, StepOptions{})
}

// PrepareWith plans a step over seqs with opt's experts (nil: the model's own) and router mask.
func (m *Model) PrepareWith(seqs []StepSeq, blockLen int, opt StepOptions) (*Prepared, error) {
	pl, err := m.plan(seqs, blockLen)
	if err != nil {
		return nil, err
	}
	return &Prepared{m: m, pl: pl, opt: opt}, nil
}

// Fits reports whether seqs (with blockLen and opt's router mask) have the shape p was planned
// for: the same caches, positions, token counts and LM-head requests, in the same order; only
// their tokens may differ. A step that fits can run on p after Reuse.
func (p *Prepared) Fits(seqs []StepSeq, blockLen int, opt StepOptions) bool {
	if blockLen != p.pl.blockLen || len(seqs) != len(p.pl.seqs) || !slices.Equal(opt.Allowed, p.opt.Allowed) {
		return false
	}
	for i, s := range seqs {
		o := p.pl.seqs[i]
		if s.Cache != o.Cache || s.Pos != o.Pos || len(s.Tokens) != len(o.Tokens) || s.OutRows != o.OutRows ||
			max(s.TopK, 1) != max(o.TopK, 1) || orOne(s.InvTemp) != orOne(o.InvTemp) {
			return false
		}
	}
	return true
}

// ErrShape is returned by Reuse for sequences that do not fit the prepared step.
var ErrShape = errors.New("model: the step's shape differs from the prepared one")

// Reuse uploads the tokens of seqs, which must fit p (Fits), and takes opt's expert runner for
// the next Run; the graphs, if captured, stay valid.
func (p *Prepared) Reuse(seqs []StepSeq, opt StepOptions) error {
	if !p.Fits(seqs, p.pl.blockLen, opt) {
		return ErrShape
	}
	if (opt.Experts == nil) != (p.opt.Experts == nil) {
		return fmt.Errorf("%w: local and remote experts", ErrShape)
	}
	ids := make([]int32, 0, p.pl.rows)
	for _, s := range seqs {
		if err := p.m.CheckSeq(s); err != nil {
			return err
		}
		ids = append(ids, s.Tokens...)
	}
	if err := p.m.Be.Upload(p.pl.idT, ids); err != nil {
		return fmt.Errorf("model: step upload: %w", err)
	}
	p.pl.seqs = seqs
	p.opt.Experts = opt.Experts
	return nil
}

// Capture records the step as graphs when the backend supports it (for remote experts, a
// kernels.SegmentGrapher); it reports whether it did. Capture the step before its first Run:
// the recording runs nothing.
func (p *Prepared) Capture(ctx context.Context) (bool, error) {
	if p.opt.Experts == nil {
		g, ok := p.m.Be.(kernels.Grapher)
		if !ok {
			return false, nil
		}
		graph, err := g.Capture(func() error { return p.m.compute(ctx, p.pl, p.opt) })
		if err != nil {
			return false, fmt.Errorf("model: capture step: %w", err)
		}
		p.graph = graph
		return true, nil
	}
	sg, ok := p.m.Be.(kernels.SegmentGrapher)
	if !ok {
		return false, nil
	}
	cut := &cutRunner{be: sg}
	if err := sg.BeginCapture(); err != nil {
		return false, fmt.Errorf("model: capture step: %w", err)
	}
	err := p.m.compute(ctx, p.pl, StepOptions{Experts: cut, Allowed: p.opt.Allowed})
	last, endErr := sg.EndCapture()
	if last != nil {
		cut.segs = append(cut.segs, last)
	}
	if err = errors.Join(err, endErr); err != nil {
		for _, g := range cut.segs {
			g.Close()
		}
		return false, fmt.Errorf("model: capture step: %w", err)
	}
	p.segs, p.hops = cut.segs, cut.hops
	return true, nil
}

// cutRunner is the expert runner of a recording: at each Dispatch and wait it ends the segment
// recorded so far and begins the next, noting the hop Run will make there.
type cutRunner struct {
	be   kernels.SegmentGrapher
	segs []kernels.Graph
	hops []hop
}

func (c *cutRunner) cut(h hop) error {
	g, err := c.be.EndCapture()
	if err != nil {
		return err
	}
	c.segs, c.hops = append(c.segs, g), append(c.hops, h)
	return c.be.BeginCapture()
}

func (c *cutRunner) Dispatch(_ context.Context, layer int, _, _, _ *kernels.Tensor) (func(*kernels.Tensor) error, error) {
	if err := c.cut(hop{layer: layer}); err != nil {
		return nil, err
	}
	return func(*kernels.Tensor) error { return c.cut(hop{layer: layer, wait: true}) }, nil
}

// Run runs the step (replaying its graphs when captured) and downloads the LM-head results.
// Like Step it records the positions written in the sequences' caches.
func (p *Prepared) Run(ctx context.Context) ([]StepOut, error) {
	switch {
	case p.graph != nil:
		if err := p.graph.Launch(); err != nil {
			return nil, fmt.Errorf("model: launch step graph: %w", err)
		}
	case p.segs != nil:
		if err := p.runSegments(ctx); err != nil {
			return nil, err
		}
	default:
		if err := p.m.compute(ctx, p.pl, p.opt); err != nil {
			return nil, err
		}
	}
	outs, err := p.pl.collect()
	if err != nil {
		return nil, err
	}
	p.pl.wrote()
	return outs, nil
}

// runSegments launches the recorded segments with the expert hops between them.
func (p *Prepared) runSegments(ctx context.Context) error {
	var wait func(*kernels.Tensor) error
	pl := p.pl
	for i, g := range p.segs {
		if err := g.Launch(); err != nil {
			return fmt.Errorf("model: launch step segment %d: %w", i, err)
		}
		if i == len(p.hops) {
			break
		}
		h := p.hops[i]
		if !h.wait {
			if err := ctx.Err(); err != nil {
				return err
			}
			w, err := p.opt.Experts.Dispatch(ctx, h.layer, pl.h, pl.rid, pl.rw)
			if err != nil {
				return fmt.Errorf("model: layer %d experts: %w", h.layer, err)
			}
			wait = w
			continue
		}
		if err := wait(pl.routed); err != nil {
			return fmt.Errorf("model: layer %d experts: %w", h.layer, err)
		}
	}
	return nil
}

// Close frees the step's buffers and graphs.
func (p *Prepared) Close() {
	if p.graph != nil {
		p.graph.Close()
		p.graph = nil
	}
	for _, g := range p.segs {
		g.Close()
	}
	p.segs, p.hops = nil, nil
	p.pl.free()
}
