package expertd

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"
)

// TracerName is the instrumentation name of expertd's spans.
const TracerName = "github.com/dlmesh/dlmesh/expertd"

// Server is one expertd replica: the Experts gRPC service over the experts it holds.
type Server struct {
	pb.UnimplementedExpertsServer

	cfg         Config
	tracer      trace.Tracer
	node        *services.Node // listener, gRPC server, health, registration
	fingerprint string

	m      *model.Model
	moe    []int32 // MoE layer indices, ascending
	held   []int32 // held expert ids, ascending
	isHeld []bool  // by global expert id
	gpus   []*pb.GPUInfo

	mu     sync.Mutex // the backend is used by one goroutine at a time
	closed bool       // under mu: Shutdown freed the model and the backend

	drainOnce sync.Once
	drain     chan struct{} // closed when Shutdown begins (draining)

	closeOnce sync.Once
	meter     *services.LoadMeter
	stats     computeStats // compute time and rows (metrics.go)
	closeErr  error
}

var _ pb.ExpertsServer = (*Server)(nil)

// Codes is expertd's error → status table: its errors are all errdefs' sentinels (invalid
// arguments, overload), in the shared entries.
var Codes = services.CodeTable{}

// New validates cfg, starts serving on cfg.Listen with health NOT_SERVING, loads the configured
// experts of every MoE layer (ctx cancels the load), reports SERVING and registers the replica
// in reg (nil: the caller registers Instance itself) as ID(). The caller must Shutdown the server.
func New(ctx context.Context, cfg Config, reg services.Registry) (*Server, error) {
	if cfg.Server.MaxRecvMsgBytes == 0 && cfg.ModelDir != "" {
		if mc, err := model.LoadConfig(cfg.ModelDir); err == nil { // else load reports it
			cfg.Server.MaxRecvMsgBytes = RequestBytes(mc, cfg.WithDefaults().MaxRows)
		}
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	fp, err := model.Fingerprint(cfg.ModelDir)
	if err != nil {
		return nil, err
	}
	tp := services.TracerProvider(cfg.TracerProvider)
	s := &Server{cfg: cfg, tracer: tp.Tracer(TracerName), fingerprint: fp, meter: services.NewLoadMeter(services.DefaultLoadWindow),
		stats: newComputeStats()}
	s.node, err = services.StartNode(ctx, services.NodeConfig{Name: "expertd", Listen: cfg.Listen, Server: cfg.Server,
		Codes: Codes, TracerProvider: tp, Registry: reg},
		func(r grpc.ServiceRegistrar) { pb.RegisterExpertsServer(r, s) }, s.load)
	if err != nil {
		return nil, err
	}
	if s.cfg.ID == "" {
		group := s.cfg.Group
		if group == "" {
			group = model.FormatExperts(s.Experts())
		}
		s.cfg.ID = "expertd-" + strings.ReplaceAll(group, ",", "_") + "-" + strings.ReplaceAll(s.Addr(), ":", "-")
	}
	s.node.SetServing(true)
	if reg != nil { // Instance asks DeviceMeta: only when there is a registry to tell
		if err := s.node.Register(ctx, s.Instance(s.cfg.ID)); err != nil {
			return nil, errors.Join(err, s.Shutdown(context.WithoutCancel(ctx)))
		}
	}
	return s, nil
}

func (s *Server) load(ctx context.Context) error {
	be, err := s.cfg.NewBackend()
	if err != nil {
		return fmt.Errorf("expertd: backend: %w", err)
	}
	mc, err := model.LoadConfig(s.cfg.ModelDir)
	if err != nil {
		be.Close()
		return fmt.Errorf("expertd: %w", err)
	}
	for _, e := range s.cfg.Experts {
		if e >= mc.Experts {
			be.Close()
			return fmt.Errorf("%w: expert %d out of range [0, %d)", ErrBadConfig, e, mc.Experts)
		}
	}
	m, err := model.Load(ctx, s.cfg.ModelDir, be, model.LoadOptions{Experts: s.cfg.Experts, ExpertActDType: s.cfg.ExpertActDType})
	if err != nil {
		be.Close()
		return fmt.Errorf("expertd: load experts %s: %w", model.FormatExperts(s.cfg.Experts), err)
	}
	s.m = m
	s.isHeld = make([]bool, m.Cfg.Experts)
	for _, e := range m.Experts.IDs {
		s.held = append(s.held, int32(e))
		s.isHeld[e] = true
	}
	for _, l := range m.Cfg.MoELayers() {
		s.moe = append(s.moe, int32(l))
	}
	s.gpus = services.GPUInfo(be)
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.node.Addr() }

// ID is the replica's instance id: Config.ID, or "expertd-GROUP-HOST-PORT" (GROUP the group
// label, else the held experts, commas as underscores).
func (s *Server) ID() string { return s.cfg.ID }

// Experts returns the held expert ids, ascending.
func (s *Server) Experts() []int {
	ids := make([]int, len(s.held))
	for i, e := range s.held {
		ids[i] = int(e)
	}
	return ids
}

// Instance describes the replica for discovery: kind expertd, tag "group=NAME" when the config
// names a group, meta "experts" (model.FormatExperts), "fingerprint" and the device's (Config.DeviceMeta).
func (s *Server) Instance(id string) services.Instance {
	meta := services.InstanceDeviceMeta(s.cfg.DeviceMeta, s.m.Be.Name())
	meta["experts"], meta["fingerprint"] = model.FormatExperts(s.Experts()), s.fingerprint
	in := services.Instance{ID: id, Kind: services.KindExpertd, Addr: s.Addr(), Meta: meta}
	if s.cfg.Group != "" {
		in.Tags = []string{"group=" + s.cfg.Group}
	}
	return in
}

// Calls is the number of Compute calls the server has answered without error.
func (s *Server) Calls() int64 { return s.meter.Snapshot().Calls }

// SetServing sets the health status the server reports (grpc.health.v1): a replica about to
// stop reports NOT_SERVING first, so health checks and discovery drop it before it drains.
func (s *Server) SetServing(serving bool) { s.node.SetServing(serving) }

// Shutdown stops the node (NOT_SERVING, deregistration, graceful stop within
// cfg.Server.StopTimeout or ctx, whichever ends first), then frees the experts. Later calls
// return the first call's result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.draining()
		close(s.drain) // ComputeStreams end between requests
		errs := []error{s.node.Stop(ctx)}
		s.mu.Lock()
		if s.m != nil {
			errs = append(errs, s.m.Close(), s.m.Be.Close())
		}
		s.closed = true
		s.mu.Unlock()
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Info implements pb.ExpertsServer: the expert set, and the load of Compute.
func (s *Server) Info(context.Context, *pb.InfoRequest) (*pb.ExpertSetInfo, error) {
	return &pb.ExpertSetInfo{Experts: slices.Clone(s.held), Layers: slices.Clone(s.moe), Fingerprint: s.fingerprint, Gpus: s.gpus,
		Load: s.meter.Snapshot().Proto()}, nil
}

// Load returns the current load of Compute.
func (s *Server) Load() services.LoadSnapshot { return s.meter.Snapshot() }

// Compute implements pb.ExpertsServer.
func (s *Server) Compute(ctx context.Context, req *pb.ExpertsRequest) (*pb.ExpertsResponse, error) {
	ctx, span := s.tracer.Start(ctx, "expertd.compute", trace.WithAttributes(
		attribute.Int("layer", int(req.GetLayer())), attribute.Int("rows", int(req.GetRows()))))
	defer span.End()
	resp := &pb.ExpertsResponse{}
	if err := s.serve(ctx, req, resp, &scratch{}); err != nil {
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	return resp, nil
}

// serve validates and computes one request into resp, with sc's buffers.
func (s *Server) serve(ctx context.Context, req *pb.ExpertsRequest, resp *pb.ExpertsResponse, sc *scratch) (err error) {
	end := s.meter.Start()
	defer func() { end(err) }()
	t0 := time.Now()
	b, err := s.validate(req, sc)
	if err != nil {
		return err
	}
	y := grow(&sc.y, b.rows*s.m.Cfg.Hidden)
	tc := time.Now()
	if err := s.compute(ctx, b, y, sc); err != nil {
		return err
	}
	s.stats.computed(b.rows, time.Since(tc))
	bf16 := req.GetDtype() == pb.DType_DTYPE_BF16
	resp.Dtype = req.GetDtype()
	resp.Y = wire.AppendF32(resp.Y[:0], y, bf16)
	resp.ComputeMs = float64(time.Since(t0).Microseconds()) / 1000
	return nil
}

// validate checks every field of req and decodes its tensors. Errors wrap
// errdefs.ErrInvalidArgument and name the field and the allowed values.
func (s *Server) validate(req *pb.ExpertsRequest, sc *scratch) (*batch, error) {
	c := s.m.Cfg
	bad := func(format string, args ...any) error {
		return fmt.Errorf("expertd: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	layer := int(req.GetLayer())
	if !slices.Contains(s.moe, int32(layer)) {
		return nil, bad("layer %d is not a MoE layer: want one of %v", layer, s.moe)
	}
	rows, hidden, topK := int(req.GetRows()), int(req.GetHidden()), int(req.GetTopK())
	if rows < 1 || rows > s.cfg.MaxRows {
		return nil, bad("rows %d not in [1, %d]", rows, s.cfg.MaxRows)
	}
	if hidden != c.Hidden {
		return nil, bad("hidden %d: want %d", hidden, c.Hidden)
	}
	if topK < 1 || topK > c.Experts {
		return nil, bad("top_k %d not in [1, %d]", topK, c.Experts)
	}
	var bf16 bool
	switch req.GetDtype() {
	case pb.DType_DTYPE_F32:
	case pb.DType_DTYPE_BF16:
		bf16 = true
	default:
		return nil, bad("dtype %v: want DTYPE_F32 or DTYPE_BF16", req.GetDtype())
	}
	size := 4
	if bf16 {
		size = 2
	}
	// Sizes first: the claimed row count allocates nothing until the payload backs it.
	if len(req.GetX()) != rows*hidden*size {
		return nil, bad("x has %d bytes: want rows·hidden·%d = %d", len(req.GetX()), size, rows*hidden*size)
	}
	if len(req.GetIds()) != rows*topK*4 {
		return nil, bad("ids has %d bytes: want rows·top_k·4 = %d", len(req.GetIds()), rows*topK*4)
	}
	if len(req.GetWeights()) != rows*topK*4 {
		return nil, bad("weights has %d bytes: want rows·top_k·4 = %d", len(req.GetWeights()), rows*topK*4)
	}
	b := &sc.b
	*b = batch{layer: layer, rows: rows, topK: topK,
		x: grow(&sc.x, rows*hidden), ids: grow(&sc.ids, rows*topK), weights: grow(&sc.w, rows*topK)}
	if err := wire.DecodeF32(b.x, req.GetX(), bf16); err != nil {
		return nil, bad("x: %v", err)
	}
	if err := wire.DecodeI32(b.ids, req.GetIds()); err != nil {
		return nil, bad("ids: %v", err)
	}
	if err := wire.DecodeF32(b.weights, req.GetWeights(), false); err != nil {
		return nil, bad("weights: %v", err)
	}
	if i := firstNonFinite(b.x); i >= 0 {
		return nil, bad("x[%d,%d] = %v: want a finite value", i/hidden, i%hidden, b.x[i])
	}
	if i := firstNonFinite(b.weights); i >= 0 {
		return nil, bad("weights[%d,%d] = %v: want a finite value", i/topK, i%topK, b.weights[i])
	}
	for i, e := range b.ids {
		if e == -1 || (e >= 0 && int(e) < len(s.isHeld) && s.isHeld[e]) {
			continue
		}
		return nil, bad("ids[%d,%d] = %d: want -1 or a held expert (%s)", i/topK, i%topK, e, model.FormatExperts(s.Experts()))
	}
	return b, nil
}

// firstNonFinite is the index of the first NaN or ±Inf in v, or -1.
func firstNonFinite(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}
