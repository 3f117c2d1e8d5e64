package engine

import (
	"context"
	"time"
)

// Observer is told about every request an Engine sees, for metrics and request logs (the
// gateway's implement it). ctx is the request's context (its span, for trace ids in logs). Its methods are called from the engine's goroutines, one request's
// calls in order; they must be quick and must not call back into the engine.
type Observer interface {
	// Stepped reports one step of req, sinceStart after Generate was called.
	Stepped(ctx context.Context, req *Request, ev *StepEvent, sinceStart time.Duration)
	// Finished reports the end of req: res on success, else err (a refused request too: bad
	// input or a full queue, then elapsed is 0 and session ""). session is the stepper session
	// the request ran on; Finished is called before that session is closed.
	Finished(ctx context.Context, req *Request, session string, res *Result, err error, elapsed time.Duration)
}

// Running is the number of requests being stepped (at most Config.MaxActive).
func (e *Engine) Running() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return min(len(e.queue), e.cfg.MaxActive)
}

// Waiting is the number of requests queued for a slot.
func (e *Engine) Waiting() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return max(len(e.queue)-e.cfg.MaxActive, 0)
}
