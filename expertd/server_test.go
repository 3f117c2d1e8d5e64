package expertd_test

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"
)

const tinyDir = "../models/llada2-tiny-go"

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs an expertd holding experts ids of the tiny model and returns a client.
func start(tb testing.TB, ids []int) (*expertd.Server, pb.ExpertsClient, healthpb.HealthClient) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := expertd.New(ctx, expertd.Config{ModelDir: tinyDir, Experts: ids}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	cc, err := services.Dial(s.Addr(), services.ClientConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cc.Close()
		if err := s.Shutdown(context.Background()); err != nil {
			tb.Error(err)
		}
	})
	return s, pb.NewExpertsClient(cc), healthpb.NewHealthClient(cc)
}

type input struct {
	rows, hidden, topK int
	x, w               []float32
	ids                []int32
}

func randomInput(rows, hidden, topK int, held []int32, seed uint64) input {
	r := rand.New(rand.NewPCG(seed, 1))
	in := input{rows: rows, hidden: hidden, topK: topK, x: make([]float32, rows*hidden), w: make([]float32, rows*topK), ids: make([]int32, rows*topK)}
	for i := range in.x {
		in.x[i] = r.Float32()*2 - 1
	}
	for i := range in.ids {
		in.w[i] = r.Float32()
		in.ids[i] = held[r.IntN(len(held))]
		if r.IntN(4) == 0 {
			in.ids[i] = -1
		}
	}
	return in
}

func (in input) request(layer int32, dt pb.DType) *pb.ExpertsRequest {
	return &pb.ExpertsRequest{Layer: layer, Rows: int32(in.rows), Hidden: int32(in.hidden), TopK: int32(in.topK), Dtype: dt,
		X: wire.AppendF32(nil, in.x, dt == pb.DType_DTYPE_BF16), Ids: wire.AppendI32(nil, in.ids), Weights: wire.AppendF32(nil, in.w, false)}
}

// localFFN computes the same rows with the in-process model's experts.
func localFFN(tb testing.TB, layer int, in input) []float32 {
	tb.Helper()
	be := cpu.New()
	m, err := model.Load(context.Background(), tinyDir, be, model.LoadOptions{Experts: model.AllExperts(16)})
	if err != nil {
		tb.Fatal(err)
	}
	defer m.Close()
	x, _ := be.Alloc(kernels.F32, in.rows, in.hidden)
	ids, _ := be.Alloc(kernels.I32, in.rows, in.topK)
	w, _ := be.Alloc(kernels.F32, in.rows, in.topK)
	dst, _ := be.Alloc(kernels.F32, in.rows, in.hidden)
	y := make([]float32, in.rows*in.hidden)
	for _, err := range []error{be.Upload(x, in.x), be.Upload(ids, in.ids), be.Upload(w, in.w),
		be.ExpertsFFN(dst, x, ids, w, m.Experts.Layers[layer]), be.Download(y, dst)} {
		if err != nil {
			tb.Fatal(err)
		}
	}
	return y
}

func TestComputeMatchesLocalExperts(t *testing.T) {
	held := []int32{0, 1, 2, 3, 4, 5, 6, 7}
	_, c, _ := start(t, expertsOf(held))
	in := randomInput(9, 256, 4, held, 7)
	want := localFFN(t, 3, in)
	resp, err := c.Compute(context.Background(), in.request(3, pb.DType_DTYPE_F32))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(want))
	if err := wire.DecodeF32(got, resp.GetY(), false); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("f32 compute differs from the in-process ExpertsFFN")
	}
	// bf16 on the wire: close, not exact
	resp, err = c.Compute(context.Background(), in.request(3, pb.DType_DTYPE_BF16))
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.DecodeF32(got, resp.GetY(), true); err != nil {
		t.Fatal(err)
	}
	var maxErr, maxAbs float64
	for i := range got {
		maxErr = max(maxErr, abs(float64(got[i]-want[i])))
		maxAbs = max(maxAbs, abs(float64(want[i])))
	}
	if maxErr > 0.02*maxAbs {
		t.Errorf("bf16 compute: max error %g against max |y| %g", maxErr, maxAbs)
	}
}

func abs(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}

func expertsOf(ids []int32) []int {
	out := make([]int, len(ids))
	for i, e := range ids {
		out[i] = int(e)
	}
	return out
}

func TestInfoAndHealth(t *testing.T) {
	s, c, h := start(t, []int{8, 9, 10, 11, 12, 13, 14, 15})
	info, err := c.Info(context.Background(), &pb.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(info.GetExperts(), []int32{8, 9, 10, 11, 12, 13, 14, 15}) || !slices.Equal(info.GetLayers(), []int32{1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("info experts %v layers %v", info.GetExperts(), info.GetLayers())
	}
	fp, _ := model.Fingerprint(tinyDir)
	if info.GetFingerprint() != fp || fp == "" {
		t.Errorf("fingerprint %q, want %q", info.GetFingerprint(), fp)
	}
	hr, err := h.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "dlmesh.v1.Experts"})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v, %v: want SERVING once loaded", hr.GetStatus(), err)
	}
	if in := s.Instance("e0"); in.Kind != services.KindExpertd || in.Meta["experts"] != "8-15" || in.Meta[services.MetaBackend] != "cpu" {
		t.Errorf("instance %+v: want experts 8-15 on backend cpu", in)
	}
}

// TestInstanceDeviceMeta: Config.DeviceMeta is asked with the backend's name and its meta is
// registered beside the expert set, which it cannot override.
func TestInstanceDeviceMeta(t *testing.T) {
	var asked []string
	gpus := []services.GPU{{Index: 0, UUID: "GPU-1234", Name: "Fake GPU", MemoryFreeMiB: 10, MemoryTotalMiB: 20}}
	s, err := expertd.New(context.Background(), expertd.Config{ModelDir: tinyDir, Experts: []int{0, 1}, DeviceMeta: func(b string) map[string]string {
		asked = append(asked, b)
		m, _ := services.DeviceMeta("cuda:0", gpus, "") // as if the backend were cuda:0
		m["experts"] = "spoofed"
		return m
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	in := s.Instance("e")
	if len(asked) != 1 || asked[0] != "cpu" {
		t.Errorf("DeviceMeta asked with %v, want [cpu]", asked)
	}
	if in.Meta[services.MetaGPUUUID] != "GPU-1234" || in.Meta[services.MetaGPUFreeMiB] != "10" || in.Meta["experts"] != "0-1" {
		t.Errorf("meta %v: want the device's meta and experts 0-1", in.Meta)
	}
}

func TestComputeRejectsMalformed(t *testing.T) {
	held := []int32{0, 1, 2, 3, 4, 5, 6, 7}
	_, c, _ := start(t, expertsOf(held))
	in := randomInput(3, 256, 4, held, 1)
	for _, tc := range []struct {
		name  string
		edit  func(r *pb.ExpertsRequest)
		field string
	}{
		{"dense layer", func(r *pb.ExpertsRequest) { r.Layer = 0 }, "layer 0"},
		{"layer past the model", func(r *pb.ExpertsRequest) { r.Layer = 8 }, "layer 8"},
		{"no rows", func(r *pb.ExpertsRequest) { r.Rows = 0 }, "rows"},
		{"hidden", func(r *pb.ExpertsRequest) { r.Hidden = 128 }, "hidden"},
		{"top_k", func(r *pb.ExpertsRequest) { r.TopK = 0 }, "top_k"},
		{"dtype", func(r *pb.ExpertsRequest) { r.Dtype = pb.DType_DTYPE_UNSPECIFIED }, "dtype"},
		{"x short", func(r *pb.ExpertsRequest) { r.X = r.X[:10] }, "x has"},
		{"ids short", func(r *pb.ExpertsRequest) { r.Ids = r.Ids[:4] }, "ids has"},
		{"weights long", func(r *pb.ExpertsRequest) { r.Weights = append(r.Weights, 0, 0, 0, 0) }, "weights has"},
		{"rows mismatch", func(r *pb.ExpertsRequest) { r.Rows = 2 }, "x has"},
		{"expert of another group", func(r *pb.ExpertsRequest) {
			r.Ids = wire.AppendI32(nil, []int32{0, 12, -1, 1, 2, 3, 4, 5, 6, 7, 0, 1})
		}, "ids[0,1] = 12"},
		{"negative id", func(r *pb.ExpertsRequest) {
			r.Ids = wire.AppendI32(nil, []int32{0, 1, -1, 1, 2, -2, 4, 5, 6, 7, 0, 1})
		}, "ids[1,1] = -2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := in.request(2, pb.DType_DTYPE_F32)
			tc.edit(req)
			_, err := c.Compute(context.Background(), req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err %v, want InvalidArgument", err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.field) {
				t.Errorf("message %q does not name %q", msg, tc.field)
			}
		})
	}
}

// TestInfoReportsLoad: Info counts the Compute calls answered and failed, with their latency.
func TestInfoReportsLoad(t *testing.T) {
	held := []int32{0, 1, 2, 3, 4, 5, 6, 7}
	srv, c, _ := start(t, expertsOf(held))
	in := randomInput(4, 256, 4, held, 3)
	ctx := context.Background()
	for range 3 {
		if _, err := c.Compute(ctx, in.request(2, pb.DType_DTYPE_F32)); err != nil {
			t.Fatal(err)
		}
	}
	bad := in.request(2, pb.DType_DTYPE_F32)
	bad.Layer = 0
	if _, err := c.Compute(ctx, bad); err == nil {
		t.Fatal("compute on a dense layer succeeded")
	}
	info, err := c.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	l := info.GetLoad()
	if l.GetCalls() != 3 || l.GetErrors() != 1 || l.GetInFlight() != 0 || l.GetWindowCalls() != 3 || l.GetWindowS() != 60 {
		t.Errorf("load %v: want 3 calls, 1 error, none in flight, 3 in the 60 s window", l)
	}
	if srv.Calls() != l.GetCalls() {
		t.Errorf("Calls() = %d, Info's load %d: one count, want them equal", srv.Calls(), l.GetCalls())
	}
	if l.GetP50Ms() <= 0 || l.GetP99Ms() < l.GetP50Ms() {
		t.Errorf("latency p50 %v ms p99 %v ms: want 0 < p50 <= p99", l.GetP50Ms(), l.GetP99Ms())
	}
}

// New registers the replica in the registry it is given, under the default id scheme (or
// Config.ID), SERVING; Shutdown takes it out again.
func TestRegistration(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    expertd.Config
		prefix string
	}{
		{"default id from experts", expertd.Config{Experts: []int{0, 1, 2, 5}}, "expertd-0-2_5-127.0.0.1-"},
		{"default id from group", expertd.Config{Experts: []int{3}, Group: "g7"}, "expertd-g7-127.0.0.1-"},
		{"explicit id", expertd.Config{Experts: []int{3}, ID: "expertd-g0-r1"}, "expertd-g0-r1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := services.NewMemRegistry()
			cfg := tc.cfg
			cfg.ModelDir = tinyDir
			s, err := expertd.New(t.Context(), cfg, reg)
			if err != nil {
				t.Fatal(err)
			}
			ins, _ := reg.Instances(t.Context(), services.KindExpertd)
			if len(ins) != 1 || ins[0].ID != s.ID() || !strings.HasPrefix(s.ID(), tc.prefix) || ins[0].Addr != s.Addr() {
				t.Fatalf("registered %+v (id %q), want one instance with id prefix %q at %s", ins, s.ID(), tc.prefix, s.Addr())
			}
			if err := s.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if ins, _ := reg.Instances(t.Context(), services.KindExpertd); len(ins) != 0 {
				t.Errorf("after Shutdown the registry holds %+v", ins)
			}
		})
	}
}
