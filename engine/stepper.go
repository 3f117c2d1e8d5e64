package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/dlmesh/dlmesh/errdefs"
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
	// Degraded[i] reports that the router had to leave out experts no replica serves for
	// steps[i] (nil: for none). Sessions on different attnd instances can differ.
	Degraded []bool
}

// degraded reports whether step i of the batch was degraded.
func (in StepInfo) degraded(i int) bool { return i < len(in.Degraded) && in.Degraded[i] }

// Stepper runs batched forwards over sessions that keep their KV cache between steps. The
// in-process engine uses LocalStepper; the gateway uses a stepper that calls attnd.
//
// Open allocates a session of capacity positions whose steps all use block length blockLen
// (the only place the block length is given: a batch may mix sessions of different lengths).
// Step runs one batched forward; when it fails for some sessions only (their attnd died, say),
// it returns a *StepError naming them and valid outputs for all the others; any other error
// fails the whole step. Close frees a session; closing an unknown one is not an error.
type Stepper interface {
	Open(ctx context.Context, session string, capacity, blockLen int) error
	Step(ctx context.Context, steps []SeqStep) ([]model.StepOut, StepInfo, error)
	Close(ctx context.Context, session string) error
}

// StepError is a batched step that failed for some of its sessions only: Sessions maps each
// failed session to its error; the step's outputs of every other session are valid.
type StepError struct {
	Sessions map[string]error
}

func (e *StepError) Error() string {
	ids := make([]string, 0, len(e.Sessions))
	for id := range e.Sessions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var b strings.Builder
	fmt.Fprintf(&b, "engine: step failed for %d session(s)", len(ids))
	for i, id := range ids {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(ids)-3)
			break
		}
		fmt.Fprintf(&b, "; %s: %v", id, e.Sessions[id])
	}
	return b.String()
}

// Unwrap returns the sessions' errors.
func (e *StepError) Unwrap() []error {
	errs := make([]error, 0, len(e.Sessions))
	for _, err := range e.Sessions {
		errs = append(errs, err)
	}
	return errs
}

// LocalStepper runs steps on an in-process model (attention part and, unless Experts is set,
// the routed experts too). It is safe for concurrent use; steps are serialised.
type LocalStepper struct {
	M       *model.Model
	Experts model.ExpertRunner // nil: the model's own routed experts
	Allowed []bool             // router mask for degraded serving (nil: all experts)

	mu       sync.Mutex
	sessions map[string]*localSession
}

type localSession struct {
	cache    *model.Cache
	blockLen int
}

// NewLocalStepper returns a stepper over m.
func NewLocalStepper(m *model.Model) *LocalStepper {
	return &LocalStepper{M: m, sessions: map[string]*localSession{}}
}

// Open allocates the session's KV cache and keeps its block length.
func (l *LocalStepper) Open(_ context.Context, session string, capacity, blockLen int) error {
	if blockLen < 1 || blockLen > capacity {
		return fmt.Errorf("engine: session %q: block length %d not in [1, capacity %d]: %w", session, blockLen, capacity, errdefs.ErrInvalidArgument)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions == nil {
		l.sessions = map[string]*localSession{}
	}
	if _, ok := l.sessions[session]; ok {
		return fmt.Errorf("engine: open %q: %w", session, errdefs.ErrSessionExists)
	}
	c, err := l.M.NewCache(capacity)
	if err != nil {
		return err
	}
	l.sessions[session] = &localSession{cache: c, blockLen: blockLen}
	return nil
}

// Close frees the session's cache; closing an unknown session is not an error.
func (l *LocalStepper) Close(_ context.Context, session string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.sessions[session]; ok {
		s.cache.Free()
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

// Step runs one batched forward per block length among the sessions (one, usually).
func (l *LocalStepper) Step(ctx context.Context, steps []SeqStep) ([]model.StepOut, StepInfo, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seqs := make([]model.StepSeq, len(steps))
	byLen := map[int][]int{}
	var lens []int
	for i, s := range steps {
		sess, ok := l.sessions[s.Session]
		if !ok {
			return nil, StepInfo{}, fmt.Errorf("engine: step %q: %w", s.Session, errdefs.ErrUnknownSession)
		}
		seqs[i] = model.StepSeq{Cache: sess.cache, Pos: s.StartPos, Tokens: s.Tokens, OutRows: s.OutRows, TopK: s.TopK, InvTemp: s.InvTemp}
		if _, seen := byLen[sess.blockLen]; !seen {
			lens = append(lens, sess.blockLen)
		}
		byLen[sess.blockLen] = append(byLen[sess.blockLen], i)
	}
	outs := make([]model.StepOut, len(steps))
	opt := model.StepOptions{Experts: l.Experts, Allowed: l.Allowed}
	var err error
	for _, bl := range lens {
		idx := byLen[bl]
		if len(lens) == 1 {
			outs, err = l.M.Step(ctx, seqs, bl, opt)
			break
		}
		part := make([]model.StepSeq, len(idx))
		for k, i := range idx {
			part[k] = seqs[i]
		}
		var po []model.StepOut
		if po, err = l.M.Step(ctx, part, bl, opt); err != nil {
			outs = nil
			break
		}
		for k, i := range idx {
			outs[i] = po[k]
		}
	}
	info := StepInfo{}
	if slices.Contains(l.Allowed, false) {
		info.Degraded = make([]bool, len(steps))
		for i := range info.Degraded {
			info.Degraded[i] = true
		}
	}
	return outs, info, err
}
