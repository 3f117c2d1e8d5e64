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
	"sync"
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
	DefaultMaxActive  = 32
	DefaultMaxQueue   = 256
	DefaultCandidates = 64 // LM-head candidates per position when sampling without top_k
)

// Errors returned to callers.
var (
	ErrStopped = errors.New("engine: stopped")
)

// Config configures an Engine.
type Config struct {
	MaxActive     int   // requests stepped together (DefaultMaxActive)
	MaxQueue      int   // requests waiting for a slot; beyond it Generate fails with errdefs.ErrOverloaded
	ModelBlockLen int   // the model's trained block length (0: diffusion.DefaultBlockLen): others are allowed with a warning
	MaxContext    int   // window limit in tokens (prompt + generation rounded to blocks)
	MaskID, EOSID int32 // from the tokenizer files
	Vocab         int   // ids must be below this
	// TracerProvider traces the batched steps (engine.step spans); nil means the global one.
	TracerProvider trace.TracerProvider
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
	Trace        []diffusion.StepResult
	Warning      string
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
	closing sync.WaitGroup // session closes in flight
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

// Queued is the number of requests waiting or running.
func (e *Engine) Queued() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.queue)
}

type job struct {
	ctx        context.Context
	req        Request
	state      *diffusion.State
	sampler    *diffusion.Sampler
	session    string
	opened     bool
	cached     int // positions before this have final K/V in the session's cache
	blockSteps int // steps of the block being denoised
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
	}
	p := req.Params
	if err := p.Validate(); err != nil {
		return nil, "", err
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
		return nil, ErrStopped
	}
	if len(e.queue) >= e.cfg.MaxActive+e.cfg.MaxQueue {
		e.mu.Unlock()
		return nil, fmt.Errorf("engine: queue full: %d requests waiting or running (max_active %d + max_queue %d): %w", len(e.queue), e.cfg.MaxActive, e.cfg.MaxQueue, errdefs.ErrOverloaded)
	}
	e.nextID++
	j.session = fmt.Sprintf("%s#%d", req.ID, e.nextID)
	e.queue = append(e.queue, j)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
	for {
		select {
		case <-j.notify:
			j.drain(onEvent)
		case <-j.fin:
			j.drain(onEvent)
			return j.final, j.err
		}
	}
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
		steps[i] = SeqStep{Session: j.session, StartPos: j.cached, Tokens: append([]int32(nil), toks[j.cached:hi]...),
			OutRows: hi - lo, TopK: k, InvTemp: inv}
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
				e.end(ctx, j, nil, fmt.Errorf("engine: step: %w", serr))
				continue
			}
		}
		e.apply(ctx, j, candidates(outs[i]), info.degraded(i), dt)
	}
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
	e.closeAndFinish(ctx, j, r, err)
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
