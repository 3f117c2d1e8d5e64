package model

import (
	"context"
	"fmt"

	"github.com/dlmesh/dlmesh/kernels"
)

// Prepared is a step planned once and run many times on the same buffers: the benchmarks of
// the real shapes run it, and on a backend that records graphs (CUDA) the whole step, every
// layer and the LM head, is captured once and replayed with one launch.
type Prepared struct {
	m     *Model
	pl    *stepPlan
	graph kernels.Graph
}

// Prepare plans a step over seqs with the model's own routed experts.
func (m *Model) Prepare(seqs []StepSeq, blockLen int) (*Prepared, error) {
	pl, err := m.plan(seqs, blockLen)
	if err != nil {
		return nil, err
	}
	return &Prepared{m: m, pl: pl}, nil
}

// Capture records the step as a graph when the backend supports it; it reports whether it did.
func (p *Prepared) Capture(ctx context.Context) (bool, error) {
	g, ok := p.m.Be.(kernels.Grapher)
	if !ok {
		return false, nil
	}
	graph, err := g.Capture(func() error { return p.m.compute(ctx, p.pl, StepOptions{}) })
	if err != nil {
		return false, fmt.Errorf("model: capture step: %w", err)
	}
	p.graph = graph
	return true, nil
}

// Run runs the step (replaying its graph when captured) and downloads the LM-head results.
func (p *Prepared) Run(ctx context.Context) ([]StepOut, error) {
	if p.graph != nil {
		if err := p.graph.Launch(); err != nil {
			return nil, fmt.Errorf("model: launch step graph: %w", err)
		}
	} else if err := p.m.compute(ctx, p.pl, StepOptions{}); err != nil {
		return nil, err
	}
	return p.pl.collect()
}

// Close frees the step's buffers and graph.
func (p *Prepared) Close() {
	if p.graph != nil {
		p.graph.Close()
		p.graph = nil
	}
	p.pl.free()
}
