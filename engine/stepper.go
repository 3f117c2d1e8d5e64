package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/dlmesh/dlmesh/model"
)

// SeqStep is one session's part of a batched step: feed Tokens at [StartPos, StartPos+len) and
// return the LM-head candidates of the last OutRows rows.
type SeqStep struct {
	Session  string
	StartPos int
	Tokens   []int32
	OutRows  int
	TopK     int
	InvTemp  float32
}

// StepInfo is what a stepper reports about one batched step.
type StepInfo struct {
	Degraded bool // the router had to leave out experts that no replica serves
}

// Stepper runs batched forwards over sessions that keep their KV cache between steps. The
// in-process engine uses LocalStepper; the gateway uses a stepper that calls attnd.
type Stepper interface {
	Open(ctx context.Context, session string, capacity int) error
	Step(ctx context.Context, blockLen int, steps []SeqStep) ([]model.StepOut, StepInfo, error)
	Close(ctx context.Context, session string) error
}

// Errors of the local stepper.
var (
	ErrUnknownSession = errors.New("engine: unknown session")
	ErrSessionExists  = errors.New("engine: session already open")
)

// LocalStepper runs steps on an in-process model (attention part and, unless Experts is set,
// the routed experts too). It is safe for concurrent use; steps are serialised.
type LocalStepper struct {
	M       *model.Model
	Experts model.ExpertRunner // nil: the model's own routed experts
	Allowed []bool             // router mask for degraded serving (nil: all experts)

	mu       sync.Mutex
	sessions map[string]*model.Cache
}

// NewLocalStepper returns a stepper over m.
func NewLocalStepper(m *model.Model) *LocalStepper {
	return &LocalStepper{M: m, sessions: map[string]*model.Cache{}}
}

// Open allocates the session's KV cache.
func (l *LocalStepper) Open(_ context.Context, session string, capacity int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions == nil {
		l.sessions = map[string]*model.Cache{}
	}
	if _, ok := l.sessions[session]; ok {
		return fmt.Errorf("%w: %q", ErrSessionExists, session)
	}
	c, err := l.M.NewCache(capacity)
	if err != nil {
		return err
	}
	l.sessions[session] = c
	return nil
}

// Close frees the session's cache; closing an unknown session is not an error.
func (l *LocalStepper) Close(_ context.Context, session string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.sessions[session]; ok {
		c.Free()
		delete(l.sessions, session)
	}
	return nil
}

// Sessions is the number of open sessions.
func (l *LocalStepper) Sessions() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sessions)
}

// Step runs one batched forward.
func (l *LocalStepper) Step(ctx context.Context, blockLen int, steps []SeqStep) ([]model.StepOut, StepInfo, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seqs := make([]model.StepSeq, len(steps))
	for i, s := range steps {
		c, ok := l.sessions[s.Session]
		if !ok {
			return nil, StepInfo{}, fmt.Errorf("%w: %q", ErrUnknownSession, s.Session)
		}
		seqs[i] = model.StepSeq{Cache: c, Pos: s.StartPos, Tokens: s.Tokens, OutRows: s.OutRows, TopK: s.TopK, InvTemp: s.InvTemp}
	}
	outs, err := l.M.Step(ctx, seqs, blockLen, model.StepOptions{Experts: l.Experts, Allowed: l.Allowed})
	return outs, StepInfo{Degraded: l.Allowed != nil}, err
}
