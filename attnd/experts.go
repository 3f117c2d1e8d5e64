package attnd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"
)

// fanout is the remote model.ExpertRunner of one micro-batch's step: it sends each MoE layer's
// routed rows to the expert groups of a routes snapshot. It is used by one goroutine (the
// step's), layer after layer, so it reuses its host buffers and keeps one ComputeStream per
// group for the whole step; release gives both back.
type fanout struct {
	s  *Server
	r  *routes
	be kernels.Backend
	// lock is held around the backend's use by this micro-batch (nil: none), released while
	// waiting on the groups (a backend that is not kernels.Concurrent: microSteps)
	lock      sync.Locker
	expertsNs int64 // time spent in Dispatch and wait, summed over the layers
	// lastComputeNs is the slowest group's compute time (as expertd reports it) in the last layer.
	lastComputeNs int64

	buf   *hopBuf
	lanes []*lane // by group index; nil until the group's first layer
}

// hopBuf holds the host buffers of one fan-out, reused from layer to layer and, through
// Server.hopFree, from step to step: after warm-up a layer allocates nothing here. (A free list,
// not a sync.Pool: pinned memory must be freed, at Shutdown, not dropped.)
type hopBuf struct {
	hx    []float32 // [T·H] the routed hidden rows
	hid   []int32   // [T·k]
	hw    []float32 // [T·k]
	out   []float32 // [T·H] Σ_g y_g
	parts []part
	reqs  []pb.ExpertsRequest
	resps []pb.ExpertsResponse
	calls []groupCall

	// With a kernels.Stager backend the activations, ids, weights and sums live in one pinned
	// buffer (pin, from st), reused until a layer needs more.
	st  kernels.Stager
	pin []byte
}

// staged returns pinned views for a layer of T rows of H values and k choices (x, ids, weights,
// out), growing the pinned buffer when short.
func (b *hopBuf) staged(st kernels.Stager, T, H, k int) (x []float32, ids []int32, w, out []float32, err error) {
	need := 4 * (2*T*H + 2*T*k)
	if len(b.pin) < need {
		if b.pin != nil {
			if err := b.st.FreePinned(b.pin); err != nil {
				return nil, nil, nil, nil, err
			}
			b.pin = nil
		}
		if b.pin, err = st.AllocPinned(need); err != nil {
			return nil, nil, nil, nil, err
		}
		b.st = st
	}
	f := unsafe.Slice((*float32)(unsafe.Pointer(&b.pin[0])), need/4)
	x, f = f[:T*H], f[T*H:]
	out, f = f[:T*H], f[T*H:]
	w, f = f[:T*k], f[T*k:]
	ids = unsafe.Slice((*int32)(unsafe.Pointer(&f[0])), T*k)
	return x, ids, w, out, nil
}

// free releases the pinned buffer.
func (b *hopBuf) free() error {
	if b.pin == nil {
		return nil
	}
	err := b.st.FreePinned(b.pin)
	b.pin = nil
	return err
}

// dropHopBuffers frees the idle prepared steps and fan-outs' host buffers; the next steps
// allocate new ones. It
// runs when the process has been idle a while (services.OnIdleTrim): a burst of large steps
// must not keep its buffers resident for good.
func (s *Server) dropHopBuffers() {
	func() {
		defer s.lockBackend()()
		s.plans.drop(nil)
	}()
	s.hopMu.Lock()
	idle := s.hopFree
	s.hopFree = nil
	s.hopMu.Unlock()
	for _, b := range idle {
		if err := b.free(); err != nil {
			slog.Warn("attnd: free an idle fan-out's pinned buffer", "err", err)
		}
	}
}

// groupCall is the state of one group's call within one layer.
type groupCall struct {
	lane    *lane // nil: a unary call in its own goroutine (the fallback)
	err     error
	sentAt  time.Time
	waitNs  int64 // from send to the response being decoded
	compNs  int64 // expertd's compute time
	replica string
}

func (s *Server) newFanout(r *routes) *fanout {
	var buf *hopBuf
	s.hopMu.Lock()
	if n := len(s.hopFree); n > 0 {
		buf, s.hopFree = s.hopFree[n-1], s.hopFree[:n-1]
	} else {
		buf = &hopBuf{}
	}
	s.hopMu.Unlock()
	return &fanout{s: s, r: r, be: s.m.Be, buf: buf, lanes: make([]*lane, len(r.groups))}
}

// release gives the fan-out's streams and buffers back; the fan-out is not used after.
func (f *fanout) release() {
	for i, l := range f.lanes {
		if l != nil {
			f.s.lanes.put(l)
			f.lanes[i] = nil
		}
	}
	if f.buf != nil {
		f.s.hopMu.Lock()
		f.s.hopFree = append(f.s.hopFree, f.buf)
		f.s.hopMu.Unlock()
		f.buf = nil
	}
}

var _ model.ExpertRunner = (*fanout)(nil)

// f32Bytes views v as its little-endian bytes (the wire's f32 layout on the little-endian
// machines Go supports for this project: amd64, arm64).
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

func i32Bytes(v []int32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// grow returns (*b)[:n], reallocating when the capacity is short.
func grow[T any](b *[]T, n int) []T {
	if cap(*b) < n {
		*b = make([]T, n)
	}
	*b = (*b)[:n]
	return *b
}

// Dispatch implements model.ExpertRunner: download x, ids and weights once, split the rows by
// group, encode each group's rows once into its request and send it on the group's stream;
// wait receives the answers in group order and sums them into dst.
func (f *fanout) Dispatch(ctx context.Context, layer int, x, ids, weights *kernels.Tensor) (func(*kernels.Tensor) error, error) {
	t0 := time.Now()
	T, H, k := x.Rows(), x.Cols(), ids.Cols()
	b := f.buf
	var (
		hx, hw, out []float32
		hid         []int32
		err         error
	)
	st, staged := f.be.(kernels.Stager)
	if staged {
		// pinned buffers: three async copies on the backend's stream, one wait for them
		if hx, hid, hw, out, err = b.staged(st, T, H, k); err != nil {
			return nil, fmt.Errorf("attnd: pinned hop buffers: %w", err)
		}
		for _, d := range []struct {
			dst []byte
			t   *kernels.Tensor
		}{{f32Bytes(hx), x}, {i32Bytes(hid), ids}, {f32Bytes(hw), weights}} {
			if err := st.DownloadAsync(d.dst, d.t); err != nil {
				return nil, fmt.Errorf("attnd: download routed rows: %w", err)
			}
		}
		if err := f.be.Sync(); err != nil {
			return nil, fmt.Errorf("attnd: download routed rows: %w", err)
		}
	} else {
		hx, hid, hw, out = grow(&b.hx, T*H), grow(&b.hid, T*k), grow(&b.hw, T*k), grow(&b.out, T*H)
		for _, d := range []struct {
			dst any
			t   *kernels.Tensor
		}{{hx, x}, {hid, ids}, {hw, weights}} {
			if err := f.be.Download(d.dst, d.t); err != nil {
				return nil, fmt.Errorf("attnd: download routed rows: %w", err)
			}
		}
	}
	b.parts, err = splitInto(b.parts[:0], hid, hw, k, f.r.owner, len(f.r.groups))
	if err != nil {
		return nil, err
	}
	parts := b.parts
	f.s.stats.routed(layer, hid, f.r, parts)
	rows := 0
	for _, p := range parts {
		rows += len(p.rows)
	}
	ctx, span := f.s.tracer.Start(ctx, "attnd.experts", trace.WithAttributes(
		attribute.Int("layer", layer), attribute.Int("groups", len(parts)), attribute.Int("rows", rows)))
	traceparent := ""
	if span.SpanContext().IsSampled() {
		c := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, c)
		traceparent = c["traceparent"]
	}
	bf16 := f.s.cfg.WireBF16
	dtype := pb.DType_DTYPE_F32
	if bf16 {
		dtype = pb.DType_DTYPE_BF16
	}
	reqs, resps, calls := grow(&b.reqs, len(parts)), grow(&b.resps, len(parts)), grow(&b.calls, len(parts))
	var wg sync.WaitGroup
	for i := range parts {
		p := &parts[i]
		req := &reqs[i]
		*req = pb.ExpertsRequest{Layer: int32(layer), Rows: int32(len(p.rows)), Hidden: int32(H), TopK: int32(k), Dtype: dtype,
			X: req.X[:0], Ids: i32Bytes(p.ids), Weights: f32Bytes(p.weights), Traceparent: traceparent}
		// the one encode of the rows: from the downloaded activations straight into the request
		for _, r := range p.rows {
			row := hx[int(r)*H : (int(r)+1)*H]
			if bf16 {
				req.X = wire.AppendF32(req.X, row, true)
			} else {
				req.X = append(req.X, f32Bytes(row)...)
			}
		}
		c := &calls[i]
		*c = groupCall{sentAt: time.Now()}
		g := f.r.groups[p.group]
		if l := f.lane(p.group); l != nil {
			if err := l.st.Send(req); err == nil {
				c.lane, c.replica = l, l.id
				continue
			}
			f.dropLane(p.group) // broken: this group goes unary, with its retry
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := f.s.callGroup(ctx, g, req)
			if err == nil {
				resps[i].Y, resps[i].Dtype, resps[i].ComputeMs = resp.GetY(), resp.GetDtype(), resp.GetComputeMs()
			}
			c.err = err
		}()
	}
	f.expertsNs += time.Since(t0).Nanoseconds()
	dispatched := time.Now()
	return func(dst *kernels.Tensor) error {
		t1 := time.Now()
		defer func() {
			f.expertsNs += time.Since(t1).Nanoseconds()
			f.s.stats.fannedOut(layer, time.Since(t0))
		}()
		defer span.End()
		clear(out)
		if f.lock != nil { // let another micro-batch (or Open, Close) use the backend meanwhile
			f.lock.Unlock()
		}
		for i := range parts {
			if c := &calls[i]; c.lane != nil {
				c.err = f.recv(ctx, parts[i].group, c.lane, &reqs[i], &resps[i])
			}
		}
		wg.Wait() // the unary fallback calls
		if f.lock != nil {
			f.lock.Lock()
		}
		var errs []error
		f.lastComputeNs = 0
		for i := range parts {
			p, c := &parts[i], &calls[i]
			if c.err == nil {
				c.err = addRows(out, p.rows, H, &resps[i])
			}
			c.waitNs = time.Since(c.sentAt).Nanoseconds()
			c.compNs = int64(resps[i].GetComputeMs() * 1e6)
			f.lastComputeNs = max(f.lastComputeNs, c.compNs)
			if c.err != nil {
				errs = append(errs, fmt.Errorf("attnd: layer %d expert group %s: %w", layer, f.r.groups[p.group].key, c.err))
			}
		}
		if span.IsRecording() {
			f.annotate(span, dispatched, t1, calls)
		}
		if err := errors.Join(errs...); err != nil {
			span.SetStatus(codes.Error, err.Error())
			return err
		}
		if staged { // in stream order; out is written again only after the next layer's Sync
			return st.UploadAsync(dst, f32Bytes(out))
		}
		return f.be.Upload(dst, out)
	}, nil
}

// annotate records the layer's timings on its span: how long the caller worked between
// Dispatch and wait (the shared expert, overlapping the groups), how long wait blocked, and
// per group (in group order) the replica, the round trip and expertd's compute time.
func (f *fanout) annotate(span trace.Span, dispatched, waited time.Time, calls []groupCall) {
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	rtt, comp := make([]float64, len(calls)), make([]float64, len(calls))
	reps := make([]string, len(calls))
	for i, c := range calls {
		rtt[i], comp[i], reps[i] = ms(c.waitNs), ms(c.compNs), c.replica
	}
	span.SetAttributes(
		attribute.Float64("overlap_ms", ms(waited.Sub(dispatched).Nanoseconds())),
		attribute.Float64("blocked_ms", ms(time.Since(waited).Nanoseconds())),
		attribute.Float64Slice("group.rtt_ms", rtt),
		attribute.Float64Slice("group.compute_ms", comp),
		attribute.StringSlice("group.replica", reps))
}

// addRows adds a group's answer to out: out[rows[j]] += y[j], decoding y from the wire.
func addRows(out []float32, rows []int32, H int, resp *pb.ExpertsResponse) error {
	y := resp.GetY()
	bf16 := resp.GetDtype() == pb.DType_DTYPE_BF16
	size := 4
	if bf16 {
		size = 2
	}
	if len(y) != len(rows)*H*size {
		return fmt.Errorf("attnd: expertd answered %d bytes for %d rows of %d %s values", len(y), len(rows), H, resp.GetDtype())
	}
	for j, r := range rows {
		o := out[int(r)*H : (int(r)+1)*H]
		row := y[j*H*size : (j+1)*H*size]
		if bf16 {
			for c := range o {
				o[c] += kernels.BF16ToF32(uint16(row[2*c]) | uint16(row[2*c+1])<<8)
			}
			continue
		}
		src := unsafe.Slice((*float32)(unsafe.Pointer(&row[0])), H)
		for c, v := range src {
			o[c] += v
		}
	}
	return nil
}

// callGroupAvoiding is callGroup after a first attempt on failed (nil: none yet) failed with
// lastErr: it makes the remaining attempt(s) on the other replicas.
func (s *Server) callGroupAvoiding(ctx context.Context, g *group, req *pb.ExpertsRequest, failed *services.Replica, lastErr error) (*pb.ExpertsResponse, error) {
	start := 0
	if failed != nil {
		start = 1
	}
	for attempt := start; attempt < 2; attempt++ {
		r, done, err := pickOther(g.pool, failed)
		if err != nil {
			if lastErr != nil {
				return nil, fmt.Errorf("%w (no other replica to retry on: %v)", lastErr, err)
			}
			return nil, err
		}
		var resp *pb.ExpertsResponse
		err = r.Breaker().Do(ctx, func(ctx context.Context) error {
			cctx, cancel := context.WithTimeout(ctx, s.cfg.ExpertTimeout)
			defer cancel()
			var err error
			resp, err = pb.NewExpertsClient(r.Conn()).Compute(cctx, req)
			return err
		})
		done()
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !services.IsInstanceFailure(err) && !errors.Is(err, services.ErrBreakerOpen) {
			return nil, err // the replica answered: retrying elsewhere gives the same answer
		}
		lastErr = fmt.Errorf("replica %s: %w", r.Instance().ID, err)
		if attempt == 0 {
			slog.WarnContext(ctx, "expertd replica failed; retrying the call on another", "group", g.key, "layer", req.GetLayer(),
				"instance", r.Instance().ID, "err", err)
		}
		failed = r
	}
	return nil, lastErr
}

// pickOther picks a replica of p other than avoid (nil: any). The replicas picked and passed over
// stay reserved until the choice is made, so least-outstanding moves on to the next one; under
// concurrent calls the others may hold more reservations than avoid, so avoid can be picked
// several times before another replica has the fewest.
func pickOther(p *services.Pool, avoid *services.Replica) (*services.Replica, func(), error) {
	var held []func()
	defer func() {
		for _, d := range held {
			d()
		}
	}()
	for range 8*max(p.Len(), 1) + 64 {
		r, done, err := p.Pick()
		if err != nil {
			return nil, nil, err
		}
		if r != avoid {
			return r, done, nil
		}
		held = append(held, done)
	}
	return nil, nil, fmt.Errorf("attnd: pool has no replica but the failed one: %w", services.ErrNoReplica)
}

// callGroup calls Compute on a replica of g through services.Hedge: on failure of that replica,
// or when it has not answered within the pool's hedge delay (a multiple of the group's observed
// p99), once more on another replica of g (Compute is idempotent); a replica left with a call
// stuck past the delay is passed over until that call ends. Every call has the ExpertTimeout
// deadline and goes through the replica's breaker.
func (s *Server) callGroup(ctx context.Context, g *group, req *pb.ExpertsRequest) (*pb.ExpertsResponse, error) {
	return services.Hedge(ctx, g.pool, s.cfg.ExpertTimeout, func(ctx context.Context, r *services.Replica) (*pb.ExpertsResponse, error) {
		return pb.NewExpertsClient(r.Conn()).Compute(ctx, req)
	})
}
