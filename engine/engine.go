// Package engine runs block-diffusion decoding for many requests at once: it admits requests
// into a bounded queue, steps every active request together in one batched forward (requests
// join and leave at step boundaries), applies the diffusion policy to each, and streams what
// changed. The forward is behind the Stepper interface: LocalStepper runs an in-process model
// (`dlmesh run`, tests, benchmarks), and the gateway service plugs in a stepper that calls attnd
// over gRPC, so the in-process engine and the mesh share one scheduler and one policy.
//
// This package is not in ARCHITECTURE.md's table: the table puts the loop in the gateway, but
// the issue asks for an in-process engine with the same results, and keeping one scheduler for
// both (rather than a gateway copy of it) is what makes "mesh output == engine output" hold by
// construction.
//
// KV reuse: a request feeds, per step, the tokens from the first position whose K/V is not yet
// final up to the end of its current block. While a block is being denoised that is the block
// itself; on the step after a block finishes it is the finished block (now with its final
// tokens) and the next block together, so the finished block's K/V is computed from its final
// tokens in the same forward as the next block's first step. The number of forwards thus equals
// the reference's, which recomputes the whole window every step.
//
// Errors: a bad request wraps errdefs.ErrInvalidArgument, a full queue errdefs.ErrOverloaded,
// duplicate and unknown sessions errdefs.ErrSessionExists and ErrUnknownSession.
//
// Who may import: gateway, cmd/dlmesh, mesh, tests. It imports model, diffusion, tokenizer, errdefs.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/model"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// Defaults of Config.
const (
	DefaultMaxActive     = 32
	DefaultMaxQueue      = 256
	DefaultCandidates    = 64 // LM-head candidates per position when sampling without top_k
	DefaultMaxMigrations = 4
	DefaultPrefillChunk  = 512
)

// ErrSessionLost is wrapped by a Stepper's error for a session whose KV cache is gone or going
// (its instance died, stopped answering, or is draining): the engine then reopens the session,
// through the stepper, elsewhere and re-prefills it from the window it owns (Config.MaxMigrations).
var ErrSessionLost = errors.New("engine: session lost")

// Errors returned to callers.
var (
	ErrStopped = errors.New("engine: stopped")
)

// Config configures an Engine.
type Config struct {
	MaxActive int // requests stepped together (DefaultMaxActive)
	MaxQueue  int // requests waiting for a slot; beyond it Generate fails with errdefs.ErrOverloaded
	// QueueTimeout bounds a request's wait for a slot: past it Generate fails with
	// errdefs.ErrOverloaded, even while a step hangs (0: no bound). A waiting request whose
	// context ends leaves the queue at once.
	QueueTimeout time.Duration
	// MaxMigrations bounds how often one request's session may be reopened on another instance
	// after its stepper lost it (ErrSessionLost; DefaultMaxMigrations; negative: never).
	MaxMigrations int
	// PrefillChunk bounds the tokens one request feeds in one step while its window's frozen
	// part is prefilled (a long prompt, or the re-prefill after a migration): longer prefixes
	// are fed in chunks of whole blocks, one per step, so other requests' steps interleave
	// (DefaultPrefillChunk; negative: never chunk).
	PrefillChunk  int
	ModelBlockLen int   // the model's trained block length (0: diffusion.DefaultBlockLen): others are allowed with a warning
	MaxContext    int   // window limit in tokens (prompt + generation rounded to blocks)
	MaskID, EOSID int32 // from the tokenizer files
	Vocab         int   // ids must be below this
	// TracerProvider traces the batched steps (engine.step spans); nil means the global one.
	TracerProvider trace.TracerProvider
	// Observer, when set, is told of every step and every request's end (metrics, logs).
	Observer Observer
}

// Request is one generation.
type Request struct {
	ID     string
	Prompt []int32
	Params diffusion.Params
	Trace  bool // keep every step's StepResult in the Result
	// KeepSpecial keeps special tokens (added tokens marked special, such as <|role_end|>) in
	// the text; by default they are skipped, as Hugging Face's decode(skip_special_tokens=True).
	KeepSpecial bool
}

// Change is one position that a step changed.
type Change struct {
	Pos  int   // position relative to the first generated position
	ID   int32 // the new token
	Edit bool  // T2T edit (else M2T unmask)
}

// StepEvent reports one denoising step of one request.
type StepEvent struct {
	// Block is the index of the block among the request's generated blocks (0 is the block
	// holding the first generated position), Step the step number within that block (1-based):
	// `run` and the gateway's stream (hence `generate`) count alike.
	Block, Step  int
	Changes      []Change
	MaskedBefore int
	Tokens       []int32 // the current block after the step
	BlockLo      int     // absolute position of Tokens[0]
	PromptLen    int
	StepMs       float64
	Degraded     bool // the router left out experts no replica serves
}

// BlockEvent reports a finished block.
type BlockEvent struct {
	Block  int     // as StepEvent.Block
	Tokens []int32 // its generated tokens (prompt positions left out), as decoded, before any cut
	// Text is the output text this block commits, append-only: the Texts of a request's blocks
	// joined are its Result.Text. It is cut at gen_length, EOS and the first stop string, and
	// holds back a tail that could be the start of a stop string (or of a UTF-8 sequence) until
	// a later block settles it, so it may be empty.
	Text string
}

// Event is one item of a request's stream: exactly one field is set.
type Event struct {
	Step  *StepEvent
	Block *BlockEvent
}

// Result is the outcome of a request.
type Result struct {
	// IDs are the generated tokens as Hugging Face returns them: at most gen_length (the window
	// is decoded in whole blocks, the rest is dropped), cut at the first EOS and, with a stop
	// string, after the token where it begins.
	IDs []int32
	// Text is the text of IDs (special tokens skipped unless Request.KeepSpecial), cut before
	// the first stop string.
	Text string
	// FinishReason is "stop" (EOS or a stop string) or "length" (gen_length tokens).
	FinishReason string
	PromptTokens int
	Forwards     int
	Blocks       int
	Degraded     bool
	Elapsed      time.Duration
	StepTime     time.Duration // summed wall time of the request's steps
	Steps        int           // denoising steps applied
	Trace        []diffusion.StepResult
	Warning      string
	// Migrations is how often the request's session was reopened on another instance and its
	// window re-prefilled (ErrSessionLost); Reprefill is the summed wall time of those
	// re-prefills, each up to and including the re-run of the interrupted step.
	Migrations int
	Reprefill  time.Duration
}

// Engine schedules requests over a Stepper.
type Engine struct {
	cfg Config
	st  Stepper
	tok *tokenizer.Tokenizer

	tracer  trace.Tracer
	mu      sync.Mutex
	queue   []*job
	wake    chan struct{}
	stopped bool
	done    chan struct{}
	cancel  context.CancelFunc
	nextID  uint64

	migrations atomic.Int64   // sessions reopened after ErrSessionLost (Migrations)
	closing    sync.WaitGroup // session closes in flight
}

// New starts an engine. tok may be nil (no text, no stop strings).
func New(cfg Config, st Stepper, tok *tokenizer.Tokenizer) *Engine {
	if cfg.MaxActive <= 0 {
		cfg.MaxActive = DefaultMaxActive
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}
	if cfg.ModelBlockLen <= 0 {
		cfg.ModelBlockLen = diffusion.DefaultBlockLen
	}
	if cfg.MaxMigrations == 0 {
		cfg.MaxMigrations = DefaultMaxMigrations
	}
	if cfg.PrefillChunk == 0 {
		cfg.PrefillChunk = DefaultPrefillChunk
	}
	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{cfg: cfg, st: st, tok: tok, wake: make(chan struct{}, 1), done: make(chan struct{}), cancel: cancel,
		tracer: tp.Tracer("github.com/dlmesh/dlmesh/engine")}
	go e.loop(ctx)
	return e
}

// Stop ends the scheduler; requests still running fail with ErrStopped. It returns once their
// sessions are closed.
func (e *Engine) Stop() {
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		<-e.done
		e.closing.Wait()
		return
	}
	e.stopped = true
	e.mu.Unlock()
	e.cancel()
	<-e.done
	e.closing.Wait()
}

// sessionID is a new session id for request id. e.mu is held.
func (e *Engine) sessionID(id string) string {
	e.nextID++
	return fmt.Sprintf("%s#%d", id, e.nextID)
}

// Migrations is the number of sessions the engine reopened on another instance, and re-prefilled,
// after the stepper lost them (ErrSessionLost): a counter for metrics.
func (e *Engine) Migrations() int64 { return e.migrations.Load() }

// Queued is the number of requests waiting or running.
func (e *Engine) Queued() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.queue)
}

type job struct {
	ctx     context.Context
	req     Request
	state   *diffusion.State
	sampler *diffusion.Sampler
	session string
	active  bool // taken by the scheduler (guarded by Engine.mu): it no longer waits for a slot
	opened  bool
	cached  int // positions before this have final K/V in the session's cache
	// migrated is set from a migration until the re-run of the interrupted step (its re-prefill
	// time is reprefill, summed over the chunks).
	migrated   bool
	reprefill  time.Duration
	blockSteps int // steps of the block being denoised
	steps      int // steps of the request
	start      time.Time
	res        Result
	out        outText

	evMu   sync.Mutex
	events []Event
	notify chan struct{}
	final  *Result
	err    error
	fin    chan struct{}
}

func (j *job) push(ev Event) {
	j.evMu.Lock()
	j.events = append(j.events, ev)
	j.evMu.Unlock()
	select {
	case j.notify <- struct{}{}:
	default:
	}
}

func (j *job) finish(r *Result, err error) {
	j.evMu.Lock()
	j.final, j.err = r, err
	j.evMu.Unlock()
	close(j.fin)
}

// Validate checks a request against the engine's limits and returns the diffusion state.
func (e *Engine) validate(req Request) (*diffusion.State, string, error) {
	if len(req.Prompt) == 0 {
		return nil, "", fmt.Errorf("engine: prompt is empty: %w", errdefs.ErrInvalidArgument)
	}
	for i, t := range req.Prompt {
		if t < 0 || (e.cfg.Vocab > 0 && int(t) >= e.cfg.Vocab) {
			return nil, "", fmt.Errorf("engine: prompt token %d = %d not in [0, %d): %w", i, t, e.cfg.Vocab, errdefs.ErrInvalidArgument)
		}
		if t == e.cfg.MaskID {
			return nil, "", fmt.Errorf("engine: prompt token %d is the mask token (id %d), which only generated positions may hold: %w", i, t, errdefs.ErrInvalidArgument)
		}
	}
	p := req.Params
	if err := p.Validate(); err != nil {
		return nil, "", err
	}
	// The stepper asks for one candidate more than the policy looks at (see step): a top_k the
	// LM head cannot give is refused here, before the request shares a batch with others.
	if p.TopK+1 > model.MaxTopK || p.Candidates(DefaultCandidates)+1 > model.MaxTopK {
		return nil, "", &diffusion.ParamError{Field: "top_k", Value: fmt.Sprint(p.TopK),
			Msg: fmt.Sprintf("want 0 (off) or a count in [1, %d]", model.MaxTopK-1)}
	}
	window := (len(req.Prompt) + p.GenLen + p.BlockLen - 1) / p.BlockLen * p.BlockLen
	if e.cfg.MaxContext > 0 && window > e.cfg.MaxContext {
		return nil, "", fmt.Errorf("engine: prompt (%d tokens) + gen_length (%d) rounded to blocks of %d is %d tokens, over the model's %d: %w",
			len(req.Prompt), p.GenLen, p.BlockLen, window, e.cfg.MaxContext, errdefs.ErrInvalidArgument)
	}
	st, err := diffusion.NewState(req.Prompt, p, e.cfg.MaskID, e.cfg.EOSID)
	if err != nil {
		return nil, "", err
	}
	return st, p.BlockWarning(e.cfg.ModelBlockLen), nil
}

// Generate runs one request to completion, calling onEvent (from the caller's goroutine) for
// every step and finished block. It returns when the request finishes or ctx ends; in the latter
// case the request leaves the batch at the next step boundary and its session is closed.
func (e *Engine) Generate(ctx context.Context, req Request, onEvent func(Event)) (*Result, error) {
	st, warn, err := e.validate(req)
	if err != nil {
		e.refused(ctx, &req, err)
		return nil, err
	}
	j := &job{ctx: ctx, req: req, state: st, sampler: diffusion.NewSampler(req.Params), start: time.Now(),
		notify: make(chan struct{}, 1), fin: make(chan struct{})}
	j.out = newOutText(e.tok, req, e.cfg.EOSID)
	j.res.Warning = warn
	j.res.PromptTokens = len(req.Prompt)
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		e.refused(ctx, &req, ErrStopped)
		return nil, ErrStopped
	}
	if len(e.queue) >= e.cfg.MaxActive+e.cfg.MaxQueue {
		e.mu.Unlock()
		err := fmt.Errorf("engine: queue full: %d requests waiting or running (max_active %d + max_queue %d): %w", len(e.queue), e.cfg.MaxActive, e.cfg.MaxQueue, errdefs.ErrOverloaded)
		e.refused(ctx, &req, err)
		return nil, err
	}
	j.session = e.sessionID(req.ID)
	e.queue = append(e.queue, j)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
	var queueTimeout <-chan time.Time
	if e.cfg.QueueTimeout > 0 {
		t := time.NewTimer(e.cfg.QueueTimeout)
		defer t.Stop()
		queueTimeout = t.C
	}
	done := ctx.Done()
	for {
		select {
		case <-j.notify:
			j.drain(onEvent)
		case <-j.fin:
			j.drain(onEvent)
			return j.final, j.err
		case <-queueTimeout:
			queueTimeout = nil
			if e.leaveQueue(j) {
				return nil, fmt.Errorf("engine: waited %v for a slot (queue_timeout; %d requests running or waiting): %w",
					e.cfg.QueueTimeout, e.Queued(), errdefs.ErrOverloaded)
			}
		case <-done:
			done = nil // a running request leaves at the next step boundary and finishes
			if e.leaveQueue(j) {
				return nil, ctx.Err()
			}
		}
	}
}

// leaveQueue removes j from the queue if it is still waiting for a slot (never stepped, no
// session) and reports whether it did.
func (e *Engine) leaveQueue(j *job) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if j.active {
		return false
	}
	for i, q := range e.queue {
		if q == j {
			e.queue = append(e.queue[:i], e.queue[i+1:]...)
			return true
		}
	}
	return false
}

func (j *job) drain(onEvent func(Event)) {
	j.evMu.Lock()
	evs := j.events
	j.events = nil
	j.evMu.Unlock()
	if onEvent != nil {
		for _, ev := range evs {
			onEvent(ev)
		}
	}
}

// loop is the scheduler: one batched step of every active request per iteration.
func (e *Engine) loop(ctx context.Context) {
	defer close(e.done)
	for {
		e.mu.Lock()
		n := min(len(e.queue), e.cfg.MaxActive)
		active := append([]*job(nil), e.queue[:n]...)
		for _, j := range active {
			j.active = true
		}
		e.mu.Unlock()
		if ctx.Err() != nil {
			e.failAll(ErrStopped)
			return
		}
		if len(active) == 0 {
			select {
			case <-e.wake:
				continue
			case <-ctx.Done():
				e.failAll(ErrStopped)
				return
			}
		}
		var ready []*job
		for _, j := range active {
			if err := j.ctx.Err(); err != nil {
				e.end(ctx, j, nil, err)
				continue
			}
			if !j.opened {
				cap := len(j.state.Tokens())
				if err := e.st.Open(ctx, j.session, cap, j.req.Params.BlockLen); err != nil {
					e.end(ctx, j, nil, fmt.Errorf("engine: open session: %w", err))
					continue
				}
				j.opened = true
			}
			ready = append(ready, j)
		}
		if len(ready) == 0 {
			continue
		}
		// One stepper call for every request (the sessions were opened with their block lengths).
		e.step(ctx, ready)
	}
}

func (e *Engine) step(ctx context.Context, jobs []*job) {
	steps := make([]SeqStep, len(jobs))
	for i, j := range jobs {
		lo, hi := j.state.Block()
		toks := j.state.Tokens()
		// Two candidates when greedy: the mask token is never a prediction (writing it back would
		// leave the position masked forever), so a position whose argmax is the mask token takes
		// its runner-up.
		p := j.req.Params
		k, inv := p.Candidates(DefaultCandidates)+1, float32(1)
		if p.Temperature > 0 {
			inv = float32(1 / p.Temperature)
		}
		end, rows := hi, hi-lo
		if c := e.prefillChunk(p.BlockLen); c > 0 && hi-j.cached > c && lo > j.cached {
			end, rows = min(j.cached+c, lo), 0 // a prefill chunk of frozen blocks only: no policy step
		}
		steps[i] = SeqStep{Session: j.session, StartPos: j.cached, Tokens: append([]int32(nil), toks[j.cached:end]...),
			OutRows: rows, TopK: k, InvTemp: inv}
	}
	// One span per batched step, linked to every request it carries, so the stepper's spans
	// (attnd step, expert fan-out, expertd compute) hang under it and each request's trace
	// can find the steps that served it.
	links := make([]trace.Link, 0, len(jobs))
	for _, j := range jobs {
		if sc := trace.SpanContextFromContext(j.ctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	blockLen := jobs[0].req.Params.BlockLen // 0 in the span when the requests' block lengths differ
	for _, j := range jobs {
		if j.req.Params.BlockLen != blockLen {
			blockLen = 0
			break
		}
	}
	sctx, span := e.tracer.Start(ctx, "engine.step", trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("requests", len(jobs)), attribute.Int("block_length", blockLen)))
	t0 := time.Now()
	outs, info, err := e.st.Step(sctx, steps)
	dt := time.Since(t0)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	var partial *StepError
	if (err == nil || errors.As(err, &partial)) && len(outs) != len(jobs) {
		err, partial = fmt.Errorf("engine: the stepper returned %d outputs for %d sequences", len(outs), len(jobs)), nil
	}
	if err != nil && partial == nil {
		for _, j := range jobs {
			e.end(ctx, j, nil, fmt.Errorf("engine: step: %w", err))
		}
		return
	}
	for i, j := range jobs {
		if partial != nil {
			if serr, failed := partial.Sessions[j.session]; failed {
				if errors.Is(serr, ErrSessionLost) && j.res.Migrations < e.cfg.MaxMigrations {
					e.migrate(ctx, j, serr)
					continue
				}
				e.end(ctx, j, nil, fmt.Errorf("engine: step: %w", serr))
				continue
			}
		}
		if j.migrated {
			j.reprefill += dt
		}
		if steps[i].OutRows == 0 { // a prefill chunk: its K/V is final, the policy waits
			j.cached += len(steps[i].Tokens)
			continue
		}
		if j.migrated {
			j.migrated = false
			j.res.Reprefill += j.reprefill
			trace.SpanFromContext(j.ctx).AddEvent("engine.reprefilled", trace.WithAttributes(
				attribute.Int("migration", j.res.Migrations), attribute.Int("tokens", steps[i].StartPos+len(steps[i].Tokens)),
				attribute.Float64("reprefill_ms", float64(j.reprefill.Microseconds())/1000)))
			slog.InfoContext(j.ctx, "session migrated", "id", j.req.ID, "migration", j.res.Migrations,
				"session", j.session, "reprefill_ms", float64(j.reprefill.Microseconds())/1000)
			j.reprefill = 0
		}
		e.apply(ctx, j, candidates(outs[i]), info.degraded(i), dt)
	}
}

// prefillChunk is the PrefillChunk bound in whole blocks of blockLen (0: no chunking).
func (e *Engine) prefillChunk(blockLen int) int {
	if e.cfg.PrefillChunk < 0 {
		return 0
	}
	return max(e.cfg.PrefillChunk/blockLen, 1) * blockLen
}

// migrate moves j to a new session after its stepper lost the old one (its instance died, or is
// draining): the old session is closed in the background (best effort), and the next loop
// iteration opens a new one (the stepper picks a healthy instance) and feeds the window's frozen
// part again (the re-prefill, in chunks when long) with the interrupted step, whose result is
// then what it would have been: the policy state never moved.
func (e *Engine) migrate(ctx context.Context, j *job, cause error) {
	old := j.session
	e.mu.Lock()
	j.session = e.sessionID(j.req.ID)
	e.mu.Unlock()
	e.migrations.Add(1)
	j.res.Migrations++
	lo, _ := j.state.Block()
	trace.SpanFromContext(j.ctx).AddEvent("engine.migrate", trace.WithAttributes(
		attribute.Int("migration", j.res.Migrations), attribute.String("from_session", old),
		attribute.String("cause", cause.Error()), attribute.Int("frozen_tokens", lo)))
	slog.WarnContext(j.ctx, "session migrates: reopening it elsewhere and re-prefilling its window", "id", j.req.ID,
		"migration", j.res.Migrations, "from_session", old, "frozen_tokens", lo, "cause", cause)
	j.opened, j.cached, j.migrated, j.reprefill = false, 0, true, 0
	e.closing.Add(1)
	go func() {
		defer e.closing.Done()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = e.st.Close(cctx, old) // its instance may be gone: nothing to report
	}()
}

func (e *Engine) apply(ctx context.Context, j *job, cands []diffusion.Candidates, degraded bool, dt time.Duration) {
	lo, _ := j.state.Block()
	toks := j.state.Tokens()
	maskedBefore := 0
	for _, t := range toks[lo : lo+len(cands)] {
		if t == e.cfg.MaskID {
			maskedBefore++
		}
	}
	preds := make([]diffusion.Pred, len(cands))
	for i, c := range cands {
		preds[i] = j.sampler.Pick(withoutMask(c, e.cfg.MaskID, j.req.Params.Candidates(DefaultCandidates)))
	}
	res, err := j.state.Step(preds)
	if err != nil {
		e.end(ctx, j, nil, err)
		return
	}
	j.cached = lo
	j.blockSteps++
	j.steps++
	j.res.StepTime += dt
	j.res.Degraded = j.res.Degraded || degraded
	if j.req.Trace {
		j.res.Trace = append(j.res.Trace, res)
	}
	n := len(j.req.Prompt)
	first := n / j.req.Params.BlockLen // the block holding position n, the first generated one
	ev := &StepEvent{Block: res.Block - first, Step: j.blockSteps, MaskedBefore: maskedBefore, Tokens: res.Tokens, BlockLo: lo,
		PromptLen: n, StepMs: float64(dt.Microseconds()) / 1000, Degraded: degraded}
	for _, p := range res.Unmasked {
		ev.Changes = append(ev.Changes, Change{Pos: p - n, ID: res.Tokens[p-lo]})
	}
	for _, p := range res.Edited {
		ev.Changes = append(ev.Changes, Change{Pos: p - n, ID: res.Tokens[p-lo], Edit: true})
	}
	if o := e.cfg.Observer; o != nil {
		o.Stepped(j.ctx, &j.req, ev, time.Since(j.start))
	}
	j.push(Event{Step: ev})
	if res.BlockDone {
		j.blockSteps = 0
		j.res.Blocks++
		gen, at := res.Committed, lo
		if start := n - lo; start > 0 {
			gen, at = gen[start:], n
		}
		text, stopped := j.out.commit(gen, at, res.Done)
		if stopped && !res.Done {
			j.state.Stop()
			text += j.out.finish()
		}
		j.push(Event{Block: &BlockEvent{Block: res.Block - first, Tokens: append([]int32(nil), gen...), Text: text}})
	}
	if j.state.Done() {
		r := j.res
		r.IDs, r.Text = j.out.result()
		r.FinishReason = j.state.FinishReason()
		if j.out.stopped {
			r.FinishReason = diffusion.FinishStop
		}
		r.Forwards = j.state.Forwards()
		r.Steps = j.steps
		r.Elapsed = time.Since(j.start)
		e.end(ctx, j, &r, nil)
	}
}

// end removes j from the queue, closes its session and completes it.
func (e *Engine) end(ctx context.Context, j *job, r *Result, err error) {
	e.mu.Lock()
	for i, q := range e.queue {
		if q == j {
			e.queue = append(e.queue[:i], e.queue[i+1:]...)
			break
		}
	}
	e.mu.Unlock()
	e.finished(j, r, err)
	e.closeAndFinish(ctx, j, r, err)
}

// refused tells the observer of a request refused before it was queued.
func (e *Engine) refused(ctx context.Context, req *Request, err error) {
	if o := e.cfg.Observer; o != nil {
		o.Finished(ctx, req, "", nil, err, 0)
	}
}

// finished tells the observer that j ended.
func (e *Engine) finished(j *job, r *Result, err error) {
	if o := e.cfg.Observer; o != nil {
		session := ""
		if j.opened {
			session = j.session
		}
		o.Finished(j.ctx, &j.req, session, r, err, time.Since(j.start))
	}
}

// closeAndFinish closes j's session, then completes j (so a request's session is freed when
// Generate returns). The close runs on its own goroutine: the stepper may be slow to answer when
// the session's attnd is in trouble, and the scheduler must not wait for it. Stop waits for it.
func (e *Engine) closeAndFinish(ctx context.Context, j *job, r *Result, err error) {
	if !j.opened {
		j.finish(r, err)
		return
	}
	e.closing.Add(1)
	go func() {
		defer e.closing.Done()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = e.st.Close(cctx, j.session)
		j.finish(r, err)
	}()
}

func (e *Engine) failAll(err error) {
	e.mu.Lock()
	q := e.queue
	e.queue = nil
	e.mu.Unlock()
	for _, j := range q {
		e.finished(j, nil, err)
		e.closeAndFinish(context.Background(), j, nil, err)
	}
}

// candidates splits a stepper's LM-head output into the policy's per-position candidates.
func candidates(o model.StepOut) []diffusion.Candidates {
	rows := len(o.LSE)
	cs := make([]diffusion.Candidates, rows)
	for r := range cs {
		cs[r] = diffusion.Candidates{IDs: o.IDs[r*o.TopK : (r+1)*o.TopK], Logits: o.Logits[r*o.TopK : (r+1)*o.TopK], LSE: o.LSE[r]}
	}
	return cs
}

// withoutMask drops the mask token from a position's candidates and keeps at most want of the
// rest.
func withoutMask(c diffusion.Candidates, mask int32, want int) diffusion.Candidates {
	for i, id := range c.IDs {
		if id == mask {
			c.IDs = append(append([]int32(nil), c.IDs[:i]...), c.IDs[i+1:]...)
			c.Logits = append(append([]float32(nil), c.Logits[:i]...), c.Logits[i+1:]...)
			break
		}
	}
	keep := min(want, len(c.IDs))
	c.IDs, c.Logits = c.IDs[:keep], c.Logits[:keep]
	return c
}
