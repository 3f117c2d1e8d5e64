package attnd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
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
}

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

	mu       sync.Mutex // sessions and the backend: one step at a time
	sessions map[string]*session

	info  atomic.Pointer[pb.ModelInfo] // set once loaded (load.go)
	meter *services.LoadMeter          // Step calls
	usage usage

	poolMu sync.Mutex
	pools  map[string]*services.Pool // by expert set
	routes atomic.Pointer[routes]

	healthMu    sync.Mutex // health transitions (health.go)
	healthy     bool       // health is SERVING
	stopping    bool       // Shutdown began: health stays NOT_SERVING
	servingOnce sync.Once
	serving     chan struct{} // closed when first SERVING

	stopWatch context.CancelFunc
	watchDone chan struct{}
	closeOnce sync.Once
	closeErr  error
}

type session struct {
	cache    *model.Cache
	blockLen int
	counted  int // cache.Len as counted in usage.kvTokens
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
		watchDone: make(chan struct{}), maskID: -1, eosID: -1, meter: services.NewLoadMeter(services.DefaultLoadWindow)}
	s.clientCfg = cfg.Client
	s.clientCfg.TracerProvider = tp
	s.node, err = services.StartNode(ctx, services.NodeConfig{Name: "attnd", Listen: cfg.Listen, Server: cfg.Server,
		Codes: Codes, TracerProvider: tp, Registry: reg},
		func(r grpc.ServiceRegistrar) { pb.RegisterAttentionServer(r, s) }, s.load)
	if err != nil {
		return nil, err
	}
	if s.cfg.ID == "" {
		s.cfg.ID = "attnd-" + s.node.Addr()
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopWatch = cancel
	go s.watchExperts(wctx, reg)
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

// Shutdown reports NOT_SERVING, stops discovery, then stops the node (deregistration, graceful
// stop within cfg.Server.StopTimeout or ctx), and frees the sessions and the model.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.stopHealth()
		s.stopWatch() // no registration after this
		<-s.watchDone
		errs := []error{s.node.Stop(ctx)}
		s.poolMu.Lock()
		for k, p := range s.pools {
			errs = append(errs, p.Close())
			delete(s.pools, k)
		}
		s.poolMu.Unlock()
		s.mu.Lock()
		for id, ss := range s.sessions {
			ss.cache.Free()
			delete(s.sessions, id)
		}
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
	if id == "" {
		return nil, invalid("session_id is empty")
	}
	if _, ok := s.sessions[id]; ok {
		return nil, fmt.Errorf("attnd: open %q: %w", id, errdefs.ErrSessionExists)
	}
	if len(s.sessions) >= s.cfg.MaxSessions {
		return nil, fmt.Errorf("attnd: %d sessions open (max_sessions %d): %w", len(s.sessions), s.cfg.MaxSessions, errdefs.ErrOverloaded)
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
	c, err := s.m.NewCache(capLen)
	if err != nil {
		return nil, fmt.Errorf("attnd: open %q: %w", id, err)
	}
	s.sessions[id] = &session{cache: c, blockLen: bl}
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
		ss.cache.Free()
		delete(s.sessions, req.GetSessionId())
	}
	idle := ok && len(s.sessions) == 0
	s.mu.Unlock()
	if idle {
		s.releaseIdle()
	}
	return &pb.CloseResponse{}, nil
}

// Step implements pb.AttentionServer: one model.Step per block length among the sessions (the
// gateway sends one), with the routed experts on the expert groups.
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		return nil, ErrNotReady
	}
	ss := req.GetSessions()
	if len(ss) == 0 {
		return nil, invalid("sessions is empty")
	}
	seqs := make([]model.StepSeq, len(ss))
	lens := make([]int, len(ss))
	seen := make(map[string]bool, len(ss))
	for i, st := range ss {
		id := st.GetSessionId()
		sess, ok := s.sessions[id]
		if !ok {
			return nil, fmt.Errorf("attnd: sessions[%d] %q: %w", i, id, errdefs.ErrUnknownSession)
		}
		if seen[id] {
			return nil, invalid("sessions[%d]: session %q appears twice", i, id)
		}
		seen[id] = true
		inv := st.GetInvTemperature()
		if !(inv >= 0) || math.IsInf(float64(inv), 0) { // NaN fails inv >= 0
			return nil, invalid("sessions[%d].inv_temperature %v: want a finite value >= 0 (0 = 1)", i, inv)
		}
		seqs[i] = model.StepSeq{Cache: sess.cache, Pos: int(st.GetStartPos()), Tokens: st.GetTokens(),
			OutRows: int(st.GetOutRows()), TopK: int(st.GetTopK()), InvTemp: inv}
		lens[i] = sess.blockLen
	}
	defer s.written(ss) // what the step wrote to the caches, even if it failed later
	// the request is valid: now the expert groups must be there
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
	outs := make([]model.StepOut, len(ss))
	done := make([]bool, len(ss))
	var expertsNs int64
	for i := range ss {
		if done[i] {
			continue
		}
		var idx []int
		for j := i; j < len(ss); j++ {
			if !done[j] && lens[j] == lens[i] {
				idx = append(idx, j)
				done[j] = true
			}
		}
		ns, err := s.microSteps(ctx, r, seqs, idx, lens[i], outs)
		if err != nil {
			return nil, fmt.Errorf("attnd: step: %w", err)
		}
		expertsNs += ns
	}
	resp := &pb.StepResponse{Results: make([]*pb.SessionResult, len(ss))}
	for i, o := range outs {
		res := &pb.SessionResult{SessionId: ss[i].GetSessionId(), Ids: wire.AppendI32(nil, o.IDs),
			Logits: wire.AppendF32(nil, o.Logits, false), Lse: wire.AppendF32(nil, o.LSE, false)}
		resp.Results[i] = res
	}
	total := time.Since(t0)
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	resp.Stats = &pb.StepStats{MsTotal: ms(total.Nanoseconds()), MsExperts: ms(expertsNs),
		MsAttention: ms(max(total.Nanoseconds()-expertsNs, 0)), Degraded: r.degraded()}
	trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("degraded", r.degraded()))
	return resp, nil
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
	// another's expert calls.
	var lock sync.Locker
	if n > 1 && !kernels.IsConcurrent(s.m.Be) {
		lock = new(sync.Mutex)
	}
	var wg sync.WaitGroup
	for c, chunk := range chunks {
		fans[c] = &fanout{s: s, r: r, be: s.m.Be, lock: lock}
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
			o, err := s.m.Step(mctx, batch, blockLen, model.StepOptions{Experts: fans[c], Allowed: r.allowed})
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
