package attnd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tokenizer"
	"github.com/dlmesh/dlmesh/wire"
)

// TracerName is the instrumentation name of attnd's spans.
const TracerName = "github.com/dlmesh/dlmesh/attnd"

// ErrNotReady: a call arrived before the weights were loaded.
var ErrNotReady = errors.New("attnd: weights not loaded")

// Codes is attnd's error → status table (invalid arguments, a full session table, unknown and
// duplicate sessions are errdefs' sentinels, in the shared entries).
var Codes = services.CodeTable{
	{Err: ErrNotReady, Code: codes.Unavailable},
	{Err: ErrUncovered, Code: codes.Unavailable},
	{Err: ErrSessionBusy, Code: codes.Aborted},
}

// ErrSessionBusy: a Step names a session that another Step, still running (a chunked one,
// between its rounds), is using.
var ErrSessionBusy = errors.New("attnd: session is in another running step")

// Server is one attnd: the Attention gRPC service over the attention part of the model.
type Server struct {
	pb.UnimplementedAttentionServer

	cfg         Config
	clientCfg   services.ClientConfig
	tracer      trace.Tracer
	node        *services.Node // listener, gRPC server, health, registration (health.go)
	reg         services.Registry
	fingerprint string
	backend     string // the kernels backend's name, once loaded
	maskID      int32
	eosID       int32

	m *model.Model

	stepMu   fifoMutex  // one step (one round of a chunked step) at a time, in arrival order; taken before mu, and never under it
	mu       sync.Mutex // sessions (held briefly: never across a step's compute)
	sessions map[string]*session
	beMu     sync.Mutex   // the backend, when it is not kernels.Concurrent; taken after mu
	chunked  atomic.Int64 // session steps cut into pieces (chunk.go)

	info  atomic.Pointer[pb.ModelInfo] // set once loaded (load.go)
	meter *services.LoadMeter          // Step calls
	usage usage
	stats routeStats // routed tokens and fan-out times (metrics.go)

	poolMu sync.Mutex
	pools  map[string]*services.Pool // by expert set
	routes atomic.Pointer[routes]

	hopMu   sync.Mutex
	hopFree []*hopBuf // the idle fan-outs' host buffers (experts.go)
	untrim  func()    // unregisters dropHopBuffers from the process's idle trim
	plans   plans     // the last steps' prepared steps (plans.go)
	lanes   *lanePool // idle ComputeStreams per replica
	// unaryOnly makes every expert call a unary Compute (no lanes): for benchmarks comparing
	// the two.
	unaryOnly bool
	// betweenRounds, when set (a test seam, export_test.go), runs between two rounds of a
	// chunked step, the step lock released, before the next round takes it again.
	betweenRounds func(ctx context.Context, round int)

	healthMu    sync.Mutex // health transitions (health.go)
	healthy     bool       // health is SERVING
	stopping    bool       // Shutdown began: health stays NOT_SERVING
	servingOnce sync.Once
	serving     chan struct{} // closed when first SERVING

	stopWatch context.CancelFunc
	watchDone chan struct{}
	stopReap  context.CancelFunc
	reapDone  chan struct{}
	expired   atomic.Int64 // sessions freed by the reaper
	closeOnce sync.Once
	closeErr  error
}

type session struct {
	cache    *model.Cache
	blockLen int
	counted  int  // cache.Len as counted in usage.kvTokens
	inStep   bool // a step is using the cache (claim): no other step may, the reaper leaves it; under Server.mu
	closed   bool // Close came during that step: unclaim frees the cache
	lease    time.Duration
	expires  time.Time // the reaper frees the session after this (lease.go)
}

var _ pb.AttentionServer = (*Server)(nil)

// New validates cfg, starts serving on cfg.Listen with health NOT_SERVING, loads the attention part
// of the model (ctx cancels the load) and starts watching reg for expertd instances. Health turns
// SERVING, and the instance registers itself in reg as kind attnd, once every expert of every MoE
// layer is served by some group (WaitServing), or with AllowMissingExperts once top_k experts
// are. Health then follows the coverage (health.go). The caller must Shutdown the server.
func New(ctx context.Context, cfg Config, reg services.Registry) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	fp, err := model.Fingerprint(cfg.ModelDir)
	if err != nil {
		return nil, fmt.Errorf("attnd: %w", err)
	}
	tp := services.TracerProvider(cfg.TracerProvider)
	s := &Server{cfg: cfg, tracer: tp.Tracer(TracerName), reg: reg, fingerprint: fp,
		sessions: map[string]*session{}, pools: map[string]*services.Pool{}, serving: make(chan struct{}),
		watchDone: make(chan struct{}), maskID: -1, eosID: -1, meter: services.NewLoadMeter(services.DefaultLoadWindow),
		lanes: newLanePool(), plans: plans{max: 2 * max(cfg.MicroBatches, 1)}}
	s.clientCfg = cfg.Client
	s.clientCfg.TracerProvider = tp
	s.node, err = services.StartNode(ctx, services.NodeConfig{Name: "attnd", Listen: cfg.Listen, Server: cfg.Server,
		Codes: Codes, TracerProvider: tp, Registry: reg, Drain: s.drain},
		func(r grpc.ServiceRegistrar) { pb.RegisterAttentionServer(r, s) }, s.load)
	if err != nil {
		return nil, err
	}
	if s.cfg.ID == "" {
		s.cfg.ID = "attnd-" + s.node.Addr()
	}
	s.untrim = services.OnIdleTrim(s.dropHopBuffers)
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopWatch = cancel
	go s.watchExperts(wctx, reg)
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopReap, s.reapDone = rcancel, make(chan struct{})
	go s.reap(rctx, s.reapDone)
	return s, nil
}

func (s *Server) load(ctx context.Context) error {
	be, err := s.cfg.NewBackend()
	if err != nil {
		return fmt.Errorf("attnd: backend: %w", err)
	}
	m, err := model.Load(ctx, s.cfg.ModelDir, be, model.LoadOptions{Attention: true})
	if err != nil {
		be.Close()
		return fmt.Errorf("attnd: load attention part: %w", err)
	}
	if err := m.SetKVDType(s.cfg.KVDType); err != nil { // refuse at start, not at the first session
		m.Close()
		be.Close()
		return fmt.Errorf("attnd: kv_dtype %v: %w", s.cfg.KVDType, err)
	}
	if tok, err := tokenizer.Load(s.cfg.ModelDir); err == nil {
		s.maskID, s.eosID = tok.MaskID(), tok.EOSID()
	} else {
		slog.Warn("attnd: no tokenizer: Info reports mask_id and eos_id -1", "err", err)
	}
	s.stats.init(m.Cfg.Layers, m.Cfg.FirstKDense, m.Cfg.Experts)
	s.mu.Lock()
	s.m = m
	s.setInfo()
	s.mu.Unlock()
	return nil
}

// WaitServing blocks until every expert is covered (health SERVING) or ctx ends.
func (s *Server) WaitServing(ctx context.Context) error {
	select {
	case <-s.serving:
		return nil
	case <-ctx.Done():
		r := s.routes.Load()
		if r == nil {
			return fmt.Errorf("attnd: no expert group found: %w", ctx.Err())
		}
		return fmt.Errorf("attnd: experts %s not served: %w", r.uncovered(), ctx.Err())
	}
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.node.Addr() }

// Instance describes this attnd for discovery: meta "fingerprint" and the device's
// (Config.DeviceMeta).
func (s *Server) Instance() services.Instance {
	meta := services.InstanceDeviceMeta(s.cfg.DeviceMeta, s.backend)
	meta["fingerprint"] = s.fingerprint
	return services.Instance{ID: s.cfg.ID, Kind: services.KindAttnd, Addr: s.Addr(), Meta: meta}
}

// Sessions is the number of open sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// drain runs in a graceful stop once the instance has left discovery: the gateways see it go and
// migrate its sessions to other attnd instances (closing them here); it returns when no session
// is left, Config.DrainTimeout has passed or ctx (the stop deadline) ends, whichever is first.
func (s *Server) drain(ctx context.Context) {
	if s.cfg.DrainTimeout <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DrainTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for s.Sessions() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Shutdown reports NOT_SERVING, stops discovery, then stops the node: deregistration, a drain
// (waiting for the gateways to migrate the sessions elsewhere), graceful stop, all within
// cfg.Server.StopTimeout or ctx; then it frees the sessions left and the model.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() {
		if s.untrim != nil {
			s.untrim()
		}
		s.stopHealth()
		s.stopWatch() // no registration after this
		<-s.watchDone
		if s.stopReap != nil {
			s.stopReap()
			<-s.reapDone
		}
		errs := []error{s.node.Stop(ctx)}
		s.lanes.close()
		s.poolMu.Lock()
		for k, p := range s.pools {
			errs = append(errs, p.Close())
			delete(s.pools, k)
		}
		s.poolMu.Unlock()
		_ = s.stepMu.Lock(context.Background()) // a step cut short by the stop timeout finishes its round first (a chunked one then stops: resume)
		defer s.stepMu.Unlock()
		s.mu.Lock()
		for id, ss := range s.sessions {
			s.freeCache(ss.cache)
			delete(s.sessions, id)
		}
		s.hopMu.Lock()
		for _, b := range s.hopFree { // every fan-out is back: no step runs
			errs = append(errs, b.free())
		}
		s.hopFree = nil
		s.hopMu.Unlock()
		s.plans.drop(nil)
		if s.m != nil {
			errs = append(errs, s.m.Close(), s.m.Be.Close())
			s.m = nil
		}
		s.mu.Unlock()
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("attnd: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// Open implements pb.AttentionServer.
func (s *Server) Open(_ context.Context, req *pb.OpenRequest) (*pb.OpenResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		return nil, ErrNotReady
	}
	id := req.GetSessionId()
	if id == "" || len(id) > MaxSessionIDBytes {
		return nil, invalid("session_id has %d bytes: want 1 to %d", len(id), MaxSessionIDBytes)
	}
	if _, ok := s.sessions[id]; ok {
		return nil, fmt.Errorf("attnd: open %q: %w", id, errdefs.ErrSessionExists)
	}
	capLen, maxPos := int(req.GetCapacity()), s.m.Cfg.MaxPositions
	if capLen < 1 || (maxPos > 0 && capLen > maxPos) {
		return nil, invalid("capacity %d not in [1, %d]", capLen, maxPos)
	}
	bl := int(req.GetBlockLength())
	if bl == 0 {
		bl = diffusion.DefaultBlockLen
	}
	if bl < 1 || bl > capLen {
		return nil, invalid("block_length %d not in [1, capacity %d] (0 = %d)", bl, capLen, diffusion.DefaultBlockLen)
	}
	if len(s.sessions) >= s.cfg.MaxSessions {
		return nil, fmt.Errorf("attnd: %d sessions open (max_sessions %d): %w", len(s.sessions), s.cfg.MaxSessions, errdefs.ErrOverloaded)
	}
	if held := s.usage.kvCapacity.Load(); held+int64(capLen) > s.cfg.MaxKVTokens {
		return nil, fmt.Errorf("attnd: capacity %d with %d KV positions reserved by %d sessions is over max_kv_tokens %d: %w",
			capLen, held, len(s.sessions), s.cfg.MaxKVTokens, errdefs.ErrOverloaded)
	}
	unlock := s.lockBackend()
	c, err := s.m.NewCache(capLen)
	unlock()
	if err != nil {
		return nil, fmt.Errorf("attnd: open %q: %w", id, err)
	}
	ss := &session{cache: c, blockLen: bl, lease: s.leaseOf(req.GetLeaseMs())}
	ss.renew(time.Now())
	s.sessions[id] = ss
	s.opened(capLen)
	return &pb.OpenResponse{}, nil
}

// Close implements pb.AttentionServer: it frees a session's KV cache; closing an unknown session
// is not an error. (Shutdown stops the server.)
func (s *Server) Close(_ context.Context, req *pb.CloseRequest) (*pb.CloseResponse, error) {
	s.mu.Lock()
	ss, ok := s.sessions[req.GetSessionId()]
	if ok {
		s.closed(ss)
		delete(s.sessions, req.GetSessionId())
		if ss.inStep {
			ss.closed = true // the running step frees it when done
		} else {
			s.freeCache(ss.cache)
		}
	}
	idle := ok && len(s.sessions) == 0
	s.mu.Unlock()
	if idle {
		s.releaseIdle()
	}
	return &pb.CloseResponse{}, nil
}

// Step implements pb.AttentionServer: one model.Step per block length among the sessions (the
// gateway sends one), with the routed experts on the expert groups; in rounds when a session
// step is longer than Config.PrefillChunk (chunk.go), other Steps running between the rounds.
func (s *Server) Step(ctx context.Context, req *pb.StepRequest) (*pb.StepResponse, error) {
	ctx, span := s.tracer.Start(ctx, "attnd.step", trace.WithAttributes(attribute.Int("sessions", len(req.GetSessions()))))
	defer span.End()
	end := s.meter.Start()
	resp, err := s.step(ctx, req)
	end(err)
	if err != nil {
		span.SetStatus(otcodes.Error, err.Error())
	}
	return resp, err
}

func (s *Server) step(ctx context.Context, req *pb.StepRequest) (*pb.StepResponse, error) {
	t0 := time.Now()
	if err := s.stepMu.Lock(ctx); err != nil {
		return nil, err
	}
	locked := true
	defer func() {
		if locked {
			s.stepMu.Unlock()
		}
	}()
	cl, err := s.claim(req)
	if err != nil {
		return nil, err
	}
	ss := req.GetSessions()
	defer s.unclaim(ss, cl) // and count what the step wrote to the caches, even if it failed later
	plans, rounds := s.cut(cl)
	trace.SpanFromContext(ctx).SetAttributes(attribute.Int("rounds", rounds))
	outs := make([]model.StepOut, len(ss))
	var expertsNs int64
	degraded := false
	for round := range rounds {
		if round > 0 { // a chunked step: let the Steps that wait run first (fifoMutex)
			s.stepMu.Unlock()
			locked = false
			if s.betweenRounds != nil {
				s.betweenRounds(ctx, round)
			}
			if err := s.stepMu.Lock(ctx); err != nil {
				return nil, fmt.Errorf("attnd: chunked step stopped after round %d of %d: %w", round, rounds, err)
			}
			locked = true
			if err := s.resume(ss, cl, plans, round); err != nil {
				return nil, err
			}
		}
		// the request is valid: now the expert groups must be there
		r, err := s.stepRoutes()
		if err != nil {
			return nil, err
		}
		degraded = degraded || r.degraded()
		ns, err := s.runRound(ctx, r, cl, plans, round, outs)
		if err != nil {
			if rounds > 1 {
				return nil, fmt.Errorf("attnd: step: round %d of %d: %w", round+1, rounds, err)
			}
			return nil, fmt.Errorf("attnd: step: %w", err)
		}
		expertsNs += ns
	}
	resp := &pb.StepResponse{Results: make([]*pb.SessionResult, len(ss))}
	for i, o := range outs {
		if err := cl.fails[i]; err != nil {
			resp.Results[i] = &pb.SessionResult{SessionId: ss[i].GetSessionId(), ErrorCode: int32(Codes.Code(err)), Error: err.Error()}
			continue
		}
		res := &pb.SessionResult{SessionId: ss[i].GetSessionId(), Ids: wire.AppendI32(nil, o.IDs),
			Logits: wire.AppendF32(nil, o.Logits, false), Lse: wire.AppendF32(nil, o.LSE, false)}
		resp.Results[i] = res
	}
	total := time.Since(t0)
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	resp.Stats = &pb.StepStats{MsTotal: ms(total.Nanoseconds()), MsExperts: ms(expertsNs),
		MsAttention: ms(max(total.Nanoseconds()-expertsNs, 0)), Degraded: degraded}
	trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("degraded", degraded))
	return resp, nil
}

// stepRoutes is the current expert routes, or why a step cannot run on them.
func (s *Server) stepRoutes() (*routes, error) {
	r := s.routes.Load()
	if r == nil || len(r.groups) == 0 {
		return nil, fmt.Errorf("attnd: no expert group: %w", services.ErrNoReplica)
	}
	if r.degraded() && !s.cfg.AllowMissingExperts {
		return nil, fmt.Errorf("attnd: experts %s have no healthy replica (start an expertd serving them, or run attnd with --allow-missing-experts to serve degraded): %w",
			r.uncovered(), services.ErrNoReplica)
	}
	if r.degraded() {
		served := 0
		for _, ok := range r.allowed {
			if ok {
				served++
			}
		}
		if served < s.m.Cfg.TopK {
			return nil, fmt.Errorf("attnd: %d experts served, fewer than top_k %d (experts %s have no replica): %w",
				served, s.m.Cfg.TopK, r.uncovered(), services.ErrNoReplica)
		}
	}
	return r, nil
}

// claimed is a step's sessions, by their index in the request.
type claimed struct {
	seqs  []model.StepSeq // the whole session steps
	lens  []int           // block lengths
	fails []error         // a session refused alone (then seqs[i], sess[i] are unset)
	sess  []*session      // the sessions marked inStep
}

// claim checks the sessions of a step under s.mu and marks those that can run in use, so that a
// Close while the step runs defers freeing the cache to unclaim. s.mu is not held across the
// step: Open and Close do not wait behind a step that waits on its experts. s.stepMu is held.
// A session refused alone has its error in fails (the others run); the step fails as a whole
// only when none can run.
func (s *Server) claim(req *pb.StepRequest) (*claimed, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		return nil, ErrNotReady
	}
	ss := req.GetSessions()
	if len(ss) == 0 {
		return nil, invalid("sessions is empty")
	}
	cl := &claimed{seqs: make([]model.StepSeq, len(ss)), lens: make([]int, len(ss)), fails: make([]error, len(ss)),
		sess: make([]*session, len(ss))}
	seen := make(map[string]bool, len(ss))
	valid := 0
	for i, st := range ss {
		if cl.fails[i] = s.checkSession(i, st, seen, &cl.seqs[i], &cl.lens[i]); cl.fails[i] == nil {
			valid++
		}
	}
	if valid == 0 {
		return nil, cl.fails[0]
	}
	for i, st := range ss {
		if cl.fails[i] == nil {
			sess := s.sessions[st.GetSessionId()]
			sess.inStep = true
			cl.sess[i] = sess
		}
	}
	return cl, nil
}

// unclaim ends a step's use of its sessions: it counts what the step wrote to the caches of
// those still open and frees those closed meanwhile (unless Shutdown, between the rounds of a
// chunked step, already closed the backend).
func (s *Server) unclaim(steps []*pb.SessionStep, cl *claimed) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.written(steps)
	now := time.Now()
	for _, sess := range cl.sess {
		if sess == nil {
			continue
		}
		sess.inStep = false
		sess.renew(now) // the lease runs from the end of the session's last step
		if sess.closed && s.m != nil {
			s.freeCache(sess.cache)
		}
	}
}

// backendLock is the lock around the use of a backend that is not kernels.Concurrent, nil for
// one that is.
func (s *Server) backendLock() sync.Locker {
	if kernels.IsConcurrent(s.m.Be) {
		return nil
	}
	return &s.beMu
}

// lockBackend takes backendLock, if any, and returns its unlock.
func (s *Server) lockBackend() func() {
	l := s.backendLock()
	if l == nil {
		return func() {}
	}
	l.Lock()
	return l.Unlock
}

// freeCache frees a session's cache under backendLock.
func (s *Server) freeCache(c *model.Cache) {
	defer s.lockBackend()()
	s.plans.drop(c)
	c.Free()
}

// checkSession checks sessions[i] of a step and fills its model sequence and block length; an
// error concerns that session only. s.mu is held.
func (s *Server) checkSession(i int, st *pb.SessionStep, seen map[string]bool, seq *model.StepSeq, blockLen *int) error {
	id := st.GetSessionId()
	if len(id) > MaxSessionIDBytes {
		return invalid("sessions[%d].session_id has %d bytes: want at most %d", i, len(id), MaxSessionIDBytes)
	}
	sess, ok := s.sessions[id]
	if !ok {
		return fmt.Errorf("attnd: sessions[%d] %q: %w", i, id, errdefs.ErrUnknownSession)
	}
	if seen[id] {
		return invalid("sessions[%d]: session %q appears twice", i, id)
	}
	seen[id] = true
	if sess.inStep {
		return fmt.Errorf("attnd: sessions[%d] %q: %w", i, id, ErrSessionBusy)
	}
	*seq = model.StepSeq{Cache: sess.cache, Pos: int(st.GetStartPos()), Tokens: st.GetTokens(),
		OutRows: int(st.GetOutRows()), TopK: int(st.GetTopK()), InvTemp: st.GetInvTemperature()}
	if err := s.m.CheckSeq(*seq); err != nil {
		return fmt.Errorf("attnd: sessions[%d] %q: %w", i, id, err)
	}
	*blockLen = sess.blockLen
	sess.renew(time.Now())
	return nil
}

// stepRows is the number of token rows a batch feeds.
func stepRows(batch []model.StepSeq) int {
	n := 0
	for _, b := range batch {
		n += len(b.Tokens)
	}
	return n
}

// microSteps runs the sessions idx (one block length) as up to Config.MicroBatches concurrent
// model steps: while one micro-batch waits for its expert groups, another runs its attention
// (the ping-pong of ARCHITECTURE.md). Each session's result does not depend on the split: every
// op is computed per row. It returns the summed expert time.
func (s *Server) microSteps(ctx context.Context, r *routes, seqs []model.StepSeq, idx []int, blockLen int, outs []model.StepOut) (int64, error) {
	n := min(max(s.cfg.MicroBatches, 1), len(idx))
	chunks := make([][]int, n)
	for k, j := range idx {
		chunks[k%n] = append(chunks[k%n], j)
	}
	errs := make([]error, n)
	fans := make([]*fanout, n)
	// A backend that is not kernels.Concurrent runs one micro-batch at a time: each holds the
	// lock for its step but for its expert waits (fanout.wait), so one's attention still overlaps
	// another's expert calls. It is s.beMu, which Open and Close take too: they run beside a
	// step's expert waits, not beside its ops.
	lock := s.backendLock()
	var wg sync.WaitGroup
	for c, chunk := range chunks {
		fans[c] = s.newFanout(r)
		fans[c].lock = lock
		defer fans[c].release()
		batch := make([]model.StepSeq, len(chunk))
		for k, j := range chunk {
			batch[k] = seqs[j]
		}
		run := func() {
			mctx, span := s.tracer.Start(ctx, "attnd.microbatch", trace.WithAttributes(attribute.Int("index", c),
				attribute.Int("sessions", len(batch)), attribute.Int("rows", stepRows(batch))))
			if lock != nil {
				lock.Lock()
			}
			o, err := s.runStep(mctx, batch, blockLen, model.StepOptions{Experts: fans[c], Allowed: r.allowed})
			if lock != nil {
				lock.Unlock()
			}
			if err != nil {
				span.RecordError(err)
				span.SetStatus(otcodes.Error, err.Error())
			}
			span.End()
			if err != nil {
				errs[c] = err
				return
			}
			for k, j := range chunk {
				outs[j] = o[k]
			}
		}
		if n == 1 {
			run()
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); run() }()
	}
	wg.Wait()
	var ns int64
	for _, f := range fans {
		ns += f.expertsNs
	}
	return ns, errors.Join(errs...)
}
