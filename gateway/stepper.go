package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"
)

// RemoteStepper is the engine.Stepper of the gateway: sessions live on attnd instances. Open
// picks the attnd with the fewest open sessions from the pool and keeps that replica reserved
// for the session's lifetime (affinity: its KV cache is there); Step sends each attnd its
// sessions' part of the batch, in parallel; Close frees the session. Every call has a deadline
// and goes through the attnd's breaker. Safe for concurrent use.
type RemoteStepper struct {
	pool        *services.Pool
	prefix      string // this stepper's prefix of attnd session ids
	stepTimeout time.Duration
	callTimeout time.Duration
	lease       time.Duration // of the sessions it opens (0: attnd's default)
	stall       bool          // steps get the pool's stall deadline when another attnd is there (SetStall)
	stallFloor  time.Duration

	mu       sync.Mutex
	sessions map[string]*remoteSession
	stalled  map[*services.Replica]time.Time // attnd whose last Step stalled, until when Open passes them over
	probes   sync.WaitGroup                  // probeBack goroutines
	stop     chan struct{}                   // closed by Stop: the probes end
	stopOnce sync.Once
}

// stallCooldown is how long Open passes over an attnd whose Step stalled (unless no other is
// left); its next answered Step ends it sooner.
const stallCooldown = 30 * time.Second

type remoteSession struct {
	r       *services.Replica
	release func()
}

var _ engine.Stepper = (*RemoteStepper)(nil)

// NewRemoteStepper returns a stepper over the attnd replicas of pool.
func NewRemoteStepper(pool *services.Pool, stepTimeout, callTimeout time.Duration) *RemoteStepper {
	var nonce [6]byte
	_, _ = rand.Read(nonce[:]) // crypto/rand.Read never fails
	return &RemoteStepper{pool: pool, prefix: hex.EncodeToString(nonce[:]) + "/", stepTimeout: stepTimeout, callTimeout: callTimeout,
		sessions: map[string]*remoteSession{}, stalled: map[*services.Replica]time.Time{}, stop: make(chan struct{})}
}

// Stop ends the stepper's background probes (the gateway's Shutdown, before its pool closes).
func (st *RemoteStepper) Stop() {
	st.mu.Lock() // markStalled starts probes under mu, after looking at stop
	st.stopOnce.Do(func() { close(st.stop) })
	st.mu.Unlock()
	st.probes.Wait()
}

// isStalled reports whether Open should pass over r (its last Step stalled recently).
func (st *RemoteStepper) isStalled(r *services.Replica) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	until, ok := st.stalled[r]
	if ok && time.Now().After(until) {
		delete(st.stalled, r)
		return false
	}
	return ok
}

// markStalled records whether r's last Step stalled (true) or answered (false). A stalled
// attnd is probed back: its health is checked every stallProbeInterval until it answers
// SERVING, which ends the cooldown (a stopped process continued, a long pause over).
func (st *RemoteStepper) markStalled(r *services.Replica, stalled bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !stalled {
		delete(st.stalled, r)
		return
	}
	_, probing := st.stalled[r]
	st.stalled[r] = time.Now().Add(stallCooldown)
	select {
	case <-st.stop:
	default:
		if !probing {
			st.probes.Add(1)
			go st.probeBack(r)
		}
	}
}

// stallProbeInterval is how often a stalled attnd's health is checked.
const stallProbeInterval = time.Second

// probeBack checks a stalled attnd's health until it serves again (the cooldown ends), the
// cooldown ends by itself, or the attnd leaves the pool.
func (st *RemoteStepper) probeBack(r *services.Replica) {
	defer st.probes.Done()
	for {
		select {
		case <-st.stop:
			return
		case <-time.After(stallProbeInterval):
		}
		st.mu.Lock()
		until, ok := st.stalled[r]
		st.mu.Unlock()
		if !ok || r.Removed() || time.Now().After(until) || r.Conn() == nil {
			st.markStalled(r, false)
			return
		}
		if serving(context.Background(), r, stallProbeInterval) {
			slog.Info("gateway: a stalled attnd answers again", "attnd", r.Instance().ID)
			st.markStalled(r, false)
			return
		}
	}
}

// SetStall bounds a Step to an attnd while the pool holds another: past max(floor, multiplier
// × rows × the p99 of the pool's recent Steps' time per row) (within the step timeout) the call
// fails with DeadlineExceeded, which the engine takes for a lost attnd, so a hung attnd's
// sessions move to another one after a few seconds. Per row, because a prefill chunk of 512
// rows takes many times a denoising step of 32. A negative floor turns it off. Call before the
// first Step.
func (st *RemoteStepper) SetStall(floor time.Duration, multiplier float64) {
	if floor < 0 {
		st.stall = false
		return
	}
	st.stall, st.stallFloor = true, floor
	// the pool's hedge delay is the stall deadline of one row: multiplier × p99 per row
	st.pool.SetHedge(services.HedgeConfig{Floor: time.Nanosecond, Multiplier: multiplier, Initial: st.stepTimeout, MinSamples: stallMinSamples})
}

// stallMinSamples is how many answered Steps the p99 behind the stall deadline needs; before,
// a Step gets the whole step timeout.
const stallMinSamples = 20

// stepDeadline is the deadline of the next Step call of rows rows: the stall deadline when
// another attnd could take the sessions over, the step timeout otherwise (or when that is
// shorter).
func (st *RemoteStepper) stepDeadline(rows int) time.Duration {
	if !st.stall || st.pool.Len() < 2 {
		return st.stepTimeout
	}
	perRow := st.pool.HedgeDelay()
	if perRow >= st.stepTimeout { // too few samples yet
		return st.stepTimeout
	}
	return min(st.stepTimeout, max(st.stallFloor, perRow*time.Duration(max(rows, 1))))
}

// observeStep records an answered Step's time per row for the stall deadline.
func (st *RemoteStepper) observeStep(d time.Duration, rows int) {
	st.pool.ObserveLatency(d / time.Duration(max(rows, 1)))
}

// remoteID is the attnd session id of an engine session: prefixed per stepper, so that gateways
// sharing an attnd never collide on a session id (the engine's ids are only unique per engine).
func (st *RemoteStepper) remoteID(session string) string { return st.prefix + session }

// Sessions is the number of sessions open through this stepper.
func (st *RemoteStepper) Sessions() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.sessions)
}

// Attnd is the instance ID of the attnd holding session ("" when the session is not open).
func (st *RemoteStepper) Attnd(session string) string {
	st.mu.Lock()
	defer st.mu.Unlock()
	if s, ok := st.sessions[session]; ok {
		return s.r.Instance().ID
	}
	return ""
}

func (st *RemoteStepper) call(ctx context.Context, r *services.Replica, d time.Duration, fn func(context.Context, pb.AttentionClient) error) error {
	return r.Breaker().Do(ctx, func(ctx context.Context) error {
		cctx, cancel := services.WithTimeout(ctx, d)
		defer cancel()
		return fn(cctx, pb.NewAttentionClient(r.Conn()))
	})
}

// Open implements engine.Stepper: it picks the attnd (fewest open sessions, passing over those
// that left discovery) and opens the session there; when that attnd fails
// (an instance failure: it is down, stopping or full), it tries the next, until none is left.
func (st *RemoteStepper) Open(ctx context.Context, session string, capacity, blockLen int) error {
	tried := map[*services.Replica]bool{}
	var errs []error
	avoid := true    // pass over the attnd whose Step stalled while another is left
	revived := false // an open breaker was closed because its attnd serves again
	for {
		passed := false
		r, release, err := st.pool.PickFunc(func(r *services.Replica) bool {
			if tried[r] || r.Removed() {
				return true
			}
			if avoid && st.isStalled(r) {
				passed = true
				return true
			}
			return false
		})
		if err != nil && passed {
			avoid = false
			continue
		}
		if err != nil && !revived && st.revive(ctx, st.pool.BreakerOpen()) {
			revived, tried, errs = true, map[*services.Replica]bool{}, nil
			continue
		}
		if err != nil && len(tried) == 0 {
			return fmt.Errorf("gateway: open session: no attnd (%d known): %w", st.pool.Len(), err)
		}
		if err != nil {
			return fmt.Errorf("gateway: open session: every attnd failed (%d known): %w: %w", st.pool.Len(), services.ErrNoReplica, errors.Join(errs...))
		}
		err = st.call(ctx, r, st.callTimeout, func(ctx context.Context, c pb.AttentionClient) error {
			_, err := c.Open(ctx, &pb.OpenRequest{SessionId: st.remoteID(session), Capacity: int32(capacity), BlockLength: int32(blockLen),
				LeaseMs: int32(st.lease.Milliseconds())})
			return err
		})
		if err == nil {
			st.mu.Lock()
			st.sessions[session] = &remoteSession{r: r, release: release}
			st.mu.Unlock()
			return nil
		}
		release()
		err = fmt.Errorf("gateway: open session on %s: %w", r.Instance().ID, err)
		if ctx.Err() != nil || (!services.IsInstanceFailure(err) && !errors.Is(err, services.ErrBreakerOpen)) {
			return err
		}
		tried[r] = true
		errs = append(errs, err)
	}
}

// revive checks the health of the attnd whose breakers are open (no attnd took the Open) and
// closes the breaker of each that answers SERVING, so a restarted attnd serves at once, not
// after the breaker's open timeout; it reports whether it closed any.
func (st *RemoteStepper) revive(ctx context.Context, rs []*services.Replica) bool {
	closed := false
	for _, r := range rs {
		if !r.Removed() && serving(ctx, r, reviveTimeout) {
			r.Breaker().Reset()
			closed = true
		}
	}
	return closed
}

// serving reports whether r's health check answers SERVING within d (not through its breaker:
// the check is how a breaker or a stall mark learns the attnd is back).
func serving(ctx context.Context, r *services.Replica, d time.Duration) bool {
	if r.Conn() == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	resp, err := healthpb.NewHealthClient(r.Conn()).Check(ctx, &healthpb.HealthCheckRequest{})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}

// reviveTimeout bounds the health check of an attnd whose breaker is open.
const reviveTimeout = time.Second

// SetLease sets the lease of the sessions opened from now on (0: attnd's default). Step renews
// a session's lease; RenewLoop renews those that have not stepped.
func (st *RemoteStepper) SetLease(d time.Duration) { st.lease = d }

// RenewLoop renews the leases of every open session, one Renew per attnd, every interval until
// ctx ends (a gateway whose steps stall, behind a slow attnd say, keeps its sessions elsewhere).
func (st *RemoteStepper) RenewLoop(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		byReplica := map[*services.Replica][]string{}
		st.mu.Lock()
		for id, s := range st.sessions {
			byReplica[s.r] = append(byReplica[s.r], st.remoteID(id))
		}
		st.mu.Unlock()
		for r, ids := range byReplica {
			_ = st.call(ctx, r, st.callTimeout, func(ctx context.Context, c pb.AttentionClient) error {
				_, err := c.Renew(ctx, &pb.RenewRequest{SessionIds: ids})
				return err // a session attnd lost fails its next Step as lost: it migrates
			})
		}
	}
}

// lost reports whether err from a call to a session's attnd means the session's KV cache is gone
// or unreachable (the attnd died, hangs, is behind an open breaker, or no longer knows the
// session), so that the engine should reopen it elsewhere.
func lost(err error) bool {
	return services.IsInstanceFailure(err) || errors.Is(err, services.ErrBreakerOpen) || status.Code(err) == codes.NotFound
}

// Close implements engine.Stepper; closing an unknown session is not an error.
func (st *RemoteStepper) Close(ctx context.Context, session string) error {
	st.mu.Lock()
	s, ok := st.sessions[session]
	delete(st.sessions, session)
	st.mu.Unlock()
	if !ok {
		return nil
	}
	defer s.release()
	return st.call(ctx, s.r, st.callTimeout, func(ctx context.Context, c pb.AttentionClient) error {
		_, err := c.Close(ctx, &pb.CloseRequest{SessionId: st.remoteID(session)})
		return err
	})
}

// Step implements engine.Stepper: one Attention.Step per attnd holding some of the sessions,
// in parallel. When some attnd calls fail, the error is an *engine.StepError naming the
// sessions of those calls; the outputs of the others are valid.
func (st *RemoteStepper) Step(ctx context.Context, steps []engine.SeqStep) ([]model.StepOut, engine.StepInfo, error) {
	type call struct {
		s   *remoteSession
		idx []int
		req *pb.StepRequest
	}
	var calls []*call
	byReplica := map[*services.Replica]*call{}
	var failed *engine.StepError
	fail := func(session string, err error) {
		if failed == nil {
			failed = &engine.StepError{Sessions: map[string]error{}}
		}
		failed.Sessions[session] = err
	}
	st.mu.Lock()
	for i, sp := range steps {
		s, ok := st.sessions[sp.Session]
		if !ok {
			fail(sp.Session, fmt.Errorf("gateway: step: session %q: %w", sp.Session, errdefs.ErrUnknownSession))
			continue
		}
		if s.r.Removed() { // its attnd left discovery (stopping: drain it by migrating)
			fail(sp.Session, fmt.Errorf("gateway: step: %s left discovery: %w", s.r.Instance().ID, engine.ErrSessionLost))
			continue
		}
		c, ok := byReplica[s.r]
		if !ok {
			c = &call{s: s, req: &pb.StepRequest{}}
			byReplica[s.r] = c
			calls = append(calls, c)
		}
		c.idx = append(c.idx, i)
		c.req.Sessions = append(c.req.Sessions, &pb.SessionStep{SessionId: st.remoteID(sp.Session), StartPos: int32(sp.StartPos),
			Tokens: sp.Tokens, OutRows: int32(sp.OutRows), TopK: int32(sp.TopK), InvTemperature: sp.InvTemp})
	}
	st.mu.Unlock()

	outs := make([]model.StepOut, len(steps))
	errs := make([]error, len(calls))
	degraded := make([]bool, len(calls))
	refused := make([]map[int]error, len(calls)) // sessions attnd refused alone, by step index
	var wg sync.WaitGroup
	for ci, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp *pb.StepResponse
			t0 := time.Now()
			rows := 0
			for _, ss := range c.req.Sessions {
				rows += len(ss.Tokens)
			}
			err := st.call(ctx, c.s.r, st.stepDeadline(rows), func(ctx context.Context, ac pb.AttentionClient) error {
				var err error
				resp, err = ac.Step(ctx, c.req)
				return err
			})
			// a stall: our deadline, not the caller's, ended the call
			st.markStalled(c.s.r, err != nil && services.CodeOf(err) == codes.DeadlineExceeded && ctx.Err() == nil)
			if err == nil {
				st.observeStep(time.Since(t0), rows)
				refused[ci], err = st.convert(resp, c.idx, steps, outs)
			}
			if err != nil {
				if lost(err) {
					err = fmt.Errorf("%w: %w", engine.ErrSessionLost, err)
				}
				errs[ci] = fmt.Errorf("gateway: step on %s: %w", c.s.r.Instance().ID, err)
				return
			}
			degraded[ci] = resp.GetStats().GetDegraded()
		}()
	}
	wg.Wait()
	info := engine.StepInfo{}
	for ci, c := range calls {
		for i, err := range refused[ci] {
			if status.Code(err) == codes.NotFound { // attnd no longer knows it: restarted
				err = fmt.Errorf("%w: %w", engine.ErrSessionLost, err)
			}
			fail(steps[i].Session, fmt.Errorf("gateway: step on %s: %w", c.s.r.Instance().ID, err))
		}
		if errs[ci] == nil {
			if degraded[ci] {
				if info.Degraded == nil {
					info.Degraded = make([]bool, len(steps))
				}
				for _, i := range c.idx {
					info.Degraded[i] = true
				}
			}
			continue
		}
		for _, i := range c.idx {
			fail(steps[i].Session, errs[ci])
		}
	}
	if failed != nil {
		return outs, info, failed
	}
	return outs, info, nil
}

// convert decodes an attnd StepResponse into the StepOuts of the steps idx. A session attnd
// refused alone (error_code set) comes back in refused, by step index, as a status error with
// attnd's code; the others' outputs are valid.
func (st *RemoteStepper) convert(resp *pb.StepResponse, idx []int, steps []engine.SeqStep, outs []model.StepOut) (refused map[int]error, err error) {
	res := resp.GetResults()
	if len(res) != len(idx) {
		return nil, fmt.Errorf("gateway: attnd returned %d results for %d sessions", len(res), len(idx))
	}
	for k, i := range idx {
		r, sp := res[k], steps[i]
		if want := st.remoteID(sp.Session); r.GetSessionId() != want {
			return nil, fmt.Errorf("gateway: attnd result %d is for session %q, want %q", k, r.GetSessionId(), want)
		}
		if code := codes.Code(r.GetErrorCode()); code != codes.OK {
			if refused == nil {
				refused = map[int]error{}
			}
			refused[i] = status.Error(code, r.GetError())
			continue
		}
		rows, topK := sp.OutRows, max(sp.TopK, 1)
		o := model.StepOut{TopK: topK, IDs: make([]int32, rows*topK), Logits: make([]float32, rows*topK), LSE: make([]float32, rows)}
		if err := wire.DecodeI32(o.IDs, r.GetIds()); err != nil {
			return nil, fmt.Errorf("gateway: session %q ids: %w", sp.Session, err)
		}
		if err := wire.DecodeF32(o.Logits, r.GetLogits(), false); err != nil {
			return nil, fmt.Errorf("gateway: session %q logits: %w", sp.Session, err)
		}
		if err := wire.DecodeF32(o.LSE, r.GetLse(), false); err != nil {
			return nil, fmt.Errorf("gateway: session %q lse: %w", sp.Session, err)
		}
		outs[i] = o
	}
	return refused, nil
}
