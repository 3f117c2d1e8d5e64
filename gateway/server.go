package gateway

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

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// TracerName is the instrumentation name of the gateway's spans.
const TracerName = "github.com/dlmesh/dlmesh/gateway"

// Codes is the gateway edge's error → status table (bad requests, a full queue and unknown
// sessions are errdefs' sentinels, in the shared entries).
var Codes = services.CodeTable{
	{Err: engine.ErrStopped, Code: codes.Unavailable},
}

// Server is the gateway: the Gateway gRPC service over an engine stepping on attnd.
type Server struct {
	pb.UnimplementedGatewayServer

	cfg     Config
	tracer  trace.Tracer
	tok     *tokenizer.Tokenizer
	chat    *ChatTemplate
	mcfg    *model.Config
	pool    *services.Pool
	stepper *RemoteStepper
	eng     *engine.Engine
	obs     *observer      // metrics and request log
	node    *services.Node // listener, gRPC server, health, registration
	reg     services.Registry
	seq     atomic.Uint64

	stopWatch context.CancelFunc
	watchDone chan struct{}
	renewDone chan struct{} // RenewLoop ended (it runs under the watch's context)
	closeOnce sync.Once
	closeErr  error
}

var _ pb.GatewayServer = (*Server)(nil)

// New validates cfg, loads the tokenizer and config.json from cfg.ModelDir, starts the engine,
// serves on cfg.Listen, registers the instance in reg as kind gateway, and follows the attnd
// instances of reg. Health turns SERVING once an attnd is known. The caller must Shutdown it.
func New(ctx context.Context, cfg Config, reg services.Registry) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	tok, err := tokenizer.Load(cfg.ModelDir)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	chatTmpl, err := LoadChatTemplate(cfg.ModelDir)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if tok.MaskID() < 0 || tok.EOSID() < 0 {
		return nil, fmt.Errorf("gateway: tokenizer in %s has no mask or eos token", cfg.ModelDir)
	}
	mcfg, err := model.LoadConfig(cfg.ModelDir)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	tp := services.TracerProvider(cfg.TracerProvider)
	ccfg := cfg.Client
	ccfg.TracerProvider = tp
	s := &Server{cfg: cfg, tracer: tp.Tracer(TracerName), tok: tok, chat: chatTmpl, mcfg: mcfg, reg: reg, watchDone: make(chan struct{})}
	s.pool = services.NewPool("attnd", cfg.Breaker, func(in services.Instance) (*grpc.ClientConn, error) {
		return services.Dial(in.Addr, ccfg)
	})
	s.stepper = NewRemoteStepper(s.pool, cfg.StepTimeout, cfg.CallTimeout)
	s.stepper.SetLease(cfg.SessionLease)
	s.stepper.SetStall(cfg.StepStallFloor, cfg.StepStallMultiplier)
	s.obs = newObserver(s, cfg.ModelName)
	s.eng = engine.New(engine.Config{MaxActive: cfg.MaxActive, MaxQueue: cfg.MaxQueue, QueueTimeout: max(cfg.QueueTimeout, 0), ModelBlockLen: cfg.ModelBlockLen,
		MaxContext: mcfg.MaxPositions, MaskID: tok.MaskID(), EOSID: tok.EOSID(), Vocab: mcfg.Vocab, TracerProvider: tp,
		Observer: s.obs}, s.stepper, tok)
	scfg := cfg.Server
	if cfg.APIKey != "" {
		scfg.StreamInterceptors = append(scfg.StreamInterceptors, services.APIKeyStreamInterceptor(cfg.APIKey, pb.Gateway_Generate_FullMethodName))
	}
	s.node, err = services.StartNode(ctx, services.NodeConfig{Name: "gateway", Listen: cfg.Listen, Server: scfg,
		Codes: Codes, TracerProvider: tp, Registry: reg},
		func(r grpc.ServiceRegistrar) { pb.RegisterGatewayServer(r, s) }, nil)
	if err != nil {
		s.eng.Stop()
		return nil, err
	}
	if s.cfg.ID == "" {
		s.cfg.ID = "gateway-" + s.node.Addr()
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopWatch = cancel
	ch, err := reg.Watch(wctx, services.KindAttnd)
	if err == nil {
		err = s.node.Register(ctx, s.Instance())
	}
	if err != nil {
		close(s.watchDone)
		return nil, errors.Join(fmt.Errorf("gateway: discovery: %w", err), s.Shutdown(context.WithoutCancel(ctx)))
	}
	go s.watchAttnd(ch)
	s.renewDone = make(chan struct{})
	go func() {
		defer close(s.renewDone)
		s.stepper.RenewLoop(wctx, cfg.SessionLease/3)
	}()
	return s, nil
}

// watchAttnd keeps the attnd pool equal to the registry's attnd instances.
func (s *Server) watchAttnd(ch <-chan []services.Instance) {
	defer close(s.watchDone)
	for set := range ch {
		if err := s.pool.Update(set); err != nil {
			slog.Warn("gateway: attnd pool update", "err", err)
		}
		s.node.SetServing(s.pool.Len() > 0)
	}
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.node.Addr() }

// Instance describes the gateway for discovery.
func (s *Server) Instance() services.Instance {
	return services.Instance{ID: s.cfg.ID, Kind: services.KindGateway, Addr: s.Addr()}
}

// Queued is the number of requests running or waiting in the engine.
func (s *Server) Queued() int { return s.eng.Queued() }

// Stepper returns the gateway's RemoteStepper (for its session count).
func (s *Server) Stepper() *RemoteStepper { return s.stepper }

// Shutdown stops the node (NOT_SERVING, deregistration, graceful stop within
// cfg.Server.StopTimeout or ctx; running streams are cut after it), then stops the engine
// (closing any session left) and discovery.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() {
		errs := []error{s.node.Stop(ctx)}
		s.eng.Stop()
		s.stopWatch()
		<-s.watchDone
		if s.renewDone != nil {
			<-s.renewDone
		}
		s.stepper.Stop()
		errs = append(errs, s.pool.Close())
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Refused counts and logs a request another API (the HTTP one) refused before it reached the
// engine, as a failure with code, like the refusals of Generate.
func (s *Server) Refused(ctx context.Context, id string, code codes.Code, err error) {
	s.obs.failedCode(ctx, id, 0, 0, "", code, err)
}

// Generate implements pb.GatewayServer.
func (s *Server) Generate(req *pb.GenerateRequest, stream grpc.ServerStreamingServer[pb.GenerateEvent]) error {
	ctx := stream.Context()
	id := req.GetRequestId()
	if len(id) > s.cfg.MaxRequestIDBytes { // refused by generate; never traced or logged whole
		id = id[:s.cfg.MaxRequestIDBytes]
	}
	if id == "" {
		id = fmt.Sprintf("gw-%d", s.seq.Add(1))
	}
	ctx, span := s.tracer.Start(ctx, "gateway.generate", trace.WithAttributes(attribute.String("request_id", id)))
	defer span.End()
	err := s.generate(ctx, id, req, stream)
	if err != nil {
		span.SetStatus(otcodes.Error, err.Error())
	}
	return err
}

func (s *Server) generate(ctx context.Context, id string, req *pb.GenerateRequest, stream grpc.ServerStreamingServer[pb.GenerateEvent]) (err error) {
	t0, engineSaw := time.Now(), false
	defer func() { // the engine counts and logs the requests it saw; these are refused before it
		if err != nil && !engineSaw {
			s.obs.failed(ctx, id, 0, time.Since(t0), "", err)
		}
	}()
	text, err := s.cfg.input(req, func(ms []Message) (string, error) {
		msgs := make([]map[string]any, len(ms))
		for i, m := range ms {
			msgs[i] = map[string]any{"role": m.Role, "content": m.Content}
		}
		return s.chat.RenderMessages(msgs, nil, true)
	})
	if err != nil {
		return err
	}
	p, err := Params(req.GetParams())
	if err != nil {
		return fmt.Errorf("gateway: params: %w", err)
	}
	ids := s.tok.Encode(text)
	if len(ids) == 0 {
		return fmt.Errorf("gateway: prompt encodes to no tokens: %w", errdefs.ErrInvalidArgument)
	}
	trace.SpanFromContext(ctx).SetAttributes(attribute.Int("prompt_tokens", len(ids)),
		attribute.Int("gen_length", p.GenLen), attribute.Int("block_length", p.BlockLen))

	ev := &events{s: s, ctx: ctx, stream: stream}
	engineSaw = true
	res, err := s.eng.Generate(ctx, engine.Request{ID: id, Prompt: ids, Params: p, KeepSpecial: req.GetKeepSpecialTokens()}, ev.on)
	ev.endBlock()
	if err != nil {
		return err
	}
	if ev.err != nil {
		return ev.err
	}
	if res.Warning != "" {
		trace.SpanFromContext(ctx).AddEvent("warning", trace.WithAttributes(attribute.String("warning", res.Warning)))
	}
	return stream.Send(&pb.GenerateEvent{Event: &pb.GenerateEvent_Final{Final: final(res, ev.steps)}})
}

func final(r *engine.Result, steps int) *pb.FinalEvent {
	u := &pb.Usage{PromptTokens: int32(r.PromptTokens), GeneratedTokens: int32(len(r.IDs)), Forwards: int32(r.Forwards),
		Steps: int32(steps), Blocks: int32(r.Blocks), TotalMs: float64(r.Elapsed.Microseconds()) / 1000,
		Migrations: int32(r.Migrations), ReprefillMs: float64(r.Reprefill.Microseconds()) / 1000}
	if r.Forwards > 0 {
		u.MsPerStep = float64(r.StepTime.Microseconds()) / 1000 / float64(r.Forwards)
	}
	if sec := r.Elapsed.Seconds(); sec > 0 {
		u.TokensPerSecond = float64(len(r.IDs)) / sec
	}
	return &pb.FinalEvent{Text: r.Text, TokenIds: r.IDs, FinishReason: r.FinishReason, Degraded: r.Degraded, Usage: u}
}

// events converts the engine's events of one request into stream messages and spans.
type events struct {
	s         *Server
	ctx       context.Context
	stream    grpc.ServerStreamingServer[pb.GenerateEvent]
	steps     int
	block     int // the block being denoised (engine.StepEvent.Block)
	blockSpan trace.Span
	err       error // the first failed Send
}

func (e *events) send(ev *pb.GenerateEvent) {
	if e.err == nil {
		e.err = e.stream.Send(ev)
	}
}

func (e *events) endBlock() {
	if e.blockSpan != nil {
		e.blockSpan.End()
		e.blockSpan = nil
	}
}

func (e *events) on(ev engine.Event) {
	switch {
	case ev.Step != nil:
		st := ev.Step
		e.steps++
		block := st.Block
		now := time.Now()
		start := now.Add(-time.Duration(st.StepMs * float64(time.Millisecond)))
		if e.blockSpan == nil || block != e.block {
			e.endBlock()
			_, e.blockSpan = e.s.tracer.Start(e.ctx, "gateway.block", trace.WithTimestamp(start),
				trace.WithAttributes(attribute.Int("block", block)))
			e.block = block
		}
		out := &pb.StepEvent{Block: int32(block), Step: int32(st.Step), MaskedBefore: int32(st.MaskedBefore), StepMs: float32(st.StepMs),
			BlockStart: int32(st.BlockLo - st.PromptLen), BlockLength: int32(len(st.Tokens)), Degraded: st.Degraded}
		unmasked, edited := 0, 0
		for _, c := range st.Changes {
			kind := pb.TokenChange_KIND_UNMASK
			if c.Edit {
				kind = pb.TokenChange_KIND_EDIT
				edited++
			} else {
				unmasked++
			}
			out.Changes = append(out.Changes, &pb.TokenChange{Position: int32(c.Pos), TokenId: c.ID,
				TokenText: e.s.tok.Decode([]int32{c.ID}), Kind: kind})
		}
		bctx := trace.ContextWithSpan(e.ctx, e.blockSpan)
		_, span := e.s.tracer.Start(bctx, "gateway.step", trace.WithTimestamp(start), trace.WithAttributes(
			attribute.Int("block", block), attribute.Int("step", st.Step), attribute.Int("masked_before", st.MaskedBefore),
			attribute.Int("unmasked", unmasked), attribute.Int("edited", edited)))
		span.End(trace.WithTimestamp(now))
		e.send(&pb.GenerateEvent{Event: &pb.GenerateEvent_Step{Step: out}})
	case ev.Block != nil:
		b := ev.Block
		e.endBlock()
		e.send(&pb.GenerateEvent{Event: &pb.GenerateEvent_Block{Block: &pb.BlockEvent{Block: int32(b.Block),
			Text: b.Text, TokenIds: b.Tokens}}})
	}
}

// Migrations is the number of sessions the gateway reopened on another attnd, and re-prefilled,
// after theirs failed or left: a counter for metrics.
func (s *Server) Migrations() int64 { return s.eng.Migrations() }
