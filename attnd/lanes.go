package attnd

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// lane is one long-lived Experts.ComputeStream to one replica. A fan-out holds a lane for a
// whole step (one request per MoE layer, answered in order), so a layer's call is one Send from
// the step's goroutine and one Recv in its wait: no goroutine, no new HTTP/2 stream, no
// per-call span or interceptor. Between steps the lane waits in the lanePool.
type lane struct {
	r        *services.Replica
	id       string // r's instance ID
	st       grpc.BidiStreamingClient[pb.ExpertsRequest, pb.ExpertsResponse]
	cancel   context.CancelFunc
	done     func() // the replica's reservation (least-outstanding), held while a fan-out has it
	timedOut atomic.Bool
}

// lanePool keeps the idle lanes per replica. Lanes of a replica that left its pool break when
// its connection closes and are dropped at their next use.
type lanePool struct {
	mu     sync.Mutex
	ctx    context.Context // the lanes' parent, cancelled by close
	stop   context.CancelFunc
	idle   map[*services.Replica][]*lane
	closed bool
}

func newLanePool() *lanePool {
	// Lanes outlive the steps that use them, so they carry no step's trace: their parent is a
	// valid, unsampled span context, which keeps the gRPC stats handlers (and the ParentBased
	// samplers of both ends) from recording a span as long as the process for each stream.
	var tid trace.TraceID
	var sid trace.SpanID
	_, _ = crand.Read(tid[:])
	_, _ = crand.Read(sid[:])
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid})
	ctx, stop := context.WithCancel(trace.ContextWithSpanContext(context.Background(), sc))
	return &lanePool{ctx: ctx, stop: stop, idle: map[*services.Replica][]*lane{}}
}

// get returns an idle lane to r, or opens one.
func (p *lanePool) get(r *services.Replica) (*lane, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errors.New("attnd: shutting down")
	}
	if ls := p.idle[r]; len(ls) > 0 {
		l := ls[len(ls)-1]
		p.idle[r] = ls[:len(ls)-1]
		if len(p.idle[r]) == 0 {
			delete(p.idle, r)
		}
		p.mu.Unlock()
		return l, nil
	}
	p.mu.Unlock()
	ctx, cancel := context.WithCancel(p.ctx)
	st, err := pb.NewExpertsClient(r.Conn()).ComputeStream(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	return &lane{r: r, id: r.Instance().ID, st: st, cancel: cancel}, nil
}

// put ends a fan-out's use of l: it releases the replica reservation and keeps l for the next.
func (p *lanePool) put(l *lane) {
	if l.done != nil {
		l.done()
		l.done = nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		l.cancel()
		return
	}
	p.idle[l.r] = append(p.idle[l.r], l)
}

// close cancels every lane, idle or not; later puts cancel theirs.
func (p *lanePool) close() {
	p.mu.Lock()
	p.closed = true
	p.idle = nil
	p.mu.Unlock()
	p.stop()
}

// lane returns the fan-out's lane to group gi, taking one for the step at the group's first
// layer: the replica is picked as for a unary call (least outstanding, breaker not open) and
// stays reserved until release. nil means the group goes unary this layer (no replica, an open
// breaker, or no stream): callGroup then gives the error or the retry.
func (f *fanout) lane(gi int) *lane {
	if l := f.lanes[gi]; l != nil {
		return l
	}
	if f.s.unaryOnly {
		return nil
	}
	r, done, err := pickOther(f.r.groups[gi].pool, nil)
	if err != nil {
		return nil
	}
	if r.Conn() == nil || r.Breaker().State() == services.BreakerOpen {
		done()
		return nil
	}
	l, err := f.s.lanes.get(r)
	if err != nil {
		done()
		return nil
	}
	l.done = done
	f.lanes[gi] = l
	return l
}

// dropLane ends the fan-out's lane to group gi for good (it broke or is out of step).
func (f *fanout) dropLane(gi int) {
	l := f.lanes[gi]
	if l == nil {
		return
	}
	f.lanes[gi] = nil
	l.cancel()
	if l.done != nil {
		l.done()
	}
}

// recv receives group gi's answer to req on lane l into resp, under the ExpertTimeout deadline
// and the replica's breaker. A lane that fails is dropped and the request is made again as a
// unary call: on another replica when this one failed (the retry of callGroup), on any when the
// replica does not know ComputeStream.
func (f *fanout) recv(ctx context.Context, gi int, l *lane, req *pb.ExpertsRequest, resp *pb.ExpertsResponse) error {
	l.timedOut.Store(false)
	g := f.r.groups[gi]
	// With another replica to ask, a lane waits only the pool's hedge delay (a multiple of the
	// group's observed p99, services.Hedge): a hung replica costs one hedge delay, then the
	// request goes to another replica as a unary call.
	limit := f.s.cfg.ExpertTimeout
	if g.pool.Len() > 1 {
		limit = min(limit, g.pool.HedgeDelay())
	}
	timer := time.AfterFunc(limit, func() { l.timedOut.Store(true); l.cancel() })
	stopCtx := context.AfterFunc(ctx, l.cancel)
	t0 := time.Now()
	err := l.r.Breaker().Do(ctx, func(context.Context) error {
		err := l.st.RecvMsg(resp)
		if err != nil && l.timedOut.Load() {
			err = status.Errorf(codes.DeadlineExceeded, "attnd: no answer within %v (expert_timeout %v, or the hedge delay)", limit, f.s.cfg.ExpertTimeout)
		}
		return err
	})
	timer.Stop()
	stopCtx()
	if err == nil {
		g.pool.ObserveLatency(time.Since(t0))
		return nil
	}
	f.dropLane(gi)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var again *pb.ExpertsResponse
	switch {
	case status.Code(err) == codes.Unimplemented: // an expertd without ComputeStream
		again, err = f.s.callGroup(ctx, g, req)
	case services.IsInstanceFailure(err) || errors.Is(err, services.ErrBreakerOpen):
		again, err = f.s.callGroupAvoiding(ctx, g, req, l.r, fmt.Errorf("replica %s: %w", l.id, err))
	}
	if err != nil {
		return err
	}
	resp.Y, resp.Dtype, resp.ComputeMs = again.GetY(), again.GetDtype(), again.GetComputeMs()
	return nil
}
