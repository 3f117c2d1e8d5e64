package attnd

import (
	"context"
	"sync"

	"github.com/dlmesh/dlmesh/model"
)

// plans keeps the prepared steps (model.Prepared) of the last steps' micro-batches. The
// denoising steps of a block feed the same sessions at the same positions with new tokens, so
// the next step of a micro-batch usually fits its last plan: it reuses the plan's buffers and
// batch and, on a backend that records graphs, the graphs of its segments between expert hops
// (model.Prepared), instead of planning, allocating and launching every kernel again (runStep
// says which plans are recorded and kept).
type plans struct {
	mu     sync.Mutex
	idle   []*plan // most recently used last; at most max
	max    int
	reused int64 // runs on a plan that fitted (for tests)
}

// plan is a prepared step and how often it ran.
type plan struct {
	p      *model.Prepared
	runs   int
	tried  bool // Capture was tried (it may have found no graph support)
	caches []*model.Cache
}

// take removes and returns an idle plan that fits the step, or nil.
func (ps *plans) take(seqs []model.StepSeq, blockLen int, opt model.StepOptions) *plan {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for i := len(ps.idle) - 1; i >= 0; i-- {
		if pl := ps.idle[i]; pl.p.Fits(seqs, blockLen, opt) {
			ps.idle = append(ps.idle[:i], ps.idle[i+1:]...)
			return pl
		}
	}
	return nil
}

// put keeps pl for the next step, closing the least recently used plan beyond max.
func (ps *plans) put(pl *plan) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.idle = append(ps.idle, pl)
	for len(ps.idle) > ps.max {
		ps.idle[0].p.Close()
		ps.idle = ps.idle[1:]
	}
}

// drop closes the idle plans that use cache (nil: every plan): a closed session's cache must
// not stay referenced by a plan, nor an idle process keep plans.
func (ps *plans) drop(cache *model.Cache) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	kept := ps.idle[:0]
	for _, pl := range ps.idle {
		uses := cache == nil
		for _, c := range pl.caches {
			uses = uses || c == cache
		}
		if uses {
			pl.p.Close()
			continue
		}
		kept = append(kept, pl)
	}
	clear(ps.idle[len(kept):])
	ps.idle = kept
}

// runStep runs one micro-batch's model step on a plan: its last one when the step fits it, a
// new one otherwise. It holds the backend lock, if any, like model.Step would.
//
// What is worth keeping: a denoising step (every session feeds only its block's rows and asks
// for all of them) repeats until the block commits, so its plan is recorded at once; any other
// step that asks for output rows may repeat (it is recorded when it fits a second time); a
// prefill chunk (no output rows) never repeats, so its plan is closed after the run.
func (s *Server) runStep(ctx context.Context, seqs []model.StepSeq, blockLen int, opt model.StepOptions) ([]model.StepOut, error) {
	denoise, keep := true, true
	for _, sq := range seqs {
		denoise = denoise && sq.OutRows == len(sq.Tokens) && len(sq.Tokens) <= blockLen
		keep = keep && sq.OutRows > 0
	}
	pl := s.plans.take(seqs, blockLen, opt)
	if pl != nil {
		if err := pl.p.Reuse(seqs, opt); err != nil {
			pl.p.Close()
			pl = nil
		} else {
			s.plans.mu.Lock()
			s.plans.reused++
			s.plans.mu.Unlock()
		}
	}
	if pl == nil {
		p, err := s.m.PrepareWith(seqs, blockLen, opt)
		if err != nil {
			return nil, err
		}
		pl = &plan{p: p}
		for _, sq := range seqs {
			pl.caches = append(pl.caches, sq.Cache)
		}
	}
	if !pl.tried && (denoise || pl.runs > 0) {
		pl.tried = true
		if _, err := pl.p.Capture(ctx); err != nil {
			pl.p.Close()
			return nil, err
		}
	}
	outs, err := pl.p.Run(ctx)
	if err != nil || !keep {
		pl.p.Close()
		return outs, err
	}
	pl.runs++
	s.plans.put(pl)
	return outs, nil
}
