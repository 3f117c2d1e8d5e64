package attnd_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"

	"github.com/dlmesh/dlmesh/internal/testutil"
)

const tinyDir = "../models/llada2-tiny-go"

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func startExpertd(tb testing.TB, reg services.Registry, id string, ids []int) *expertd.Server {
	tb.Helper()
	e, err := expertd.New(context.Background(), expertd.Config{ModelDir: tinyDir, Experts: ids}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	if err := reg.Register(context.Background(), e.Instance(id)); err != nil {
		tb.Fatal(err)
	}
	return e
}

func startAttnd(tb testing.TB, reg services.Registry) (*attnd.Server, pb.AttentionClient, healthpb.HealthClient) {
	tb.Helper()
	return startAttndCfg(tb, reg, attnd.Config{ModelDir: tinyDir})
}

func startAttndCfg(tb testing.TB, reg services.Registry, cfg attnd.Config) (*attnd.Server, pb.AttentionClient, healthpb.HealthClient) {
	tb.Helper()
	a, err := attnd.New(context.Background(), cfg, reg)
	if err != nil {
		tb.Fatal(err)
	}
	cc, err := services.Dial(a.Addr(), services.ClientConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cc.Close()
		if err := a.Shutdown(context.Background()); err != nil {
			tb.Error(err)
		}
	})
	return a, pb.NewAttentionClient(cc), healthpb.NewHealthClient(cc)
}

func health(tb testing.TB, h healthpb.HealthClient) healthpb.HealthCheckResponse_ServingStatus {
	tb.Helper()
	r, err := h.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		tb.Fatal(err)
	}
	return r.GetStatus()
}

// TestNotServingUntilCovered: with only experts 0-7 served attnd stays NOT_SERVING and
// unregistered; the second group makes it SERVING.
func TestNotServingUntilCovered(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", []int{0, 1, 2, 3, 4, 5, 6, 7})
	a, _, h := startAttnd(t, reg)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := a.WaitServing(ctx); err == nil {
		t.Fatal("serving with experts 8-15 missing")
	}
	if st := health(t, h); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health %v with experts 8-15 missing, want NOT_SERVING", st)
	}
	if ins, _ := reg.Instances(context.Background(), services.KindAttnd); len(ins) != 0 {
		t.Errorf("attnd registered before it serves: %v", ins)
	}
	startExpertd(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	if st := health(t, h); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v with every expert served, want SERVING", st)
	}
	if ins, _ := reg.Instances(context.Background(), services.KindAttnd); len(ins) != 1 || ins[0].Meta[services.MetaBackend] != "cpu" {
		t.Errorf("attnd instances %v, want itself with backend=cpu", ins)
	}
}

func TestSessions(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", model.AllExperts(16))
	a, c, _ := startAttnd(t, reg)
	ctx := context.Background()
	if _, err := c.Close(ctx, &pb.CloseRequest{SessionId: "never"}); err != nil {
		t.Errorf("close of an unknown session: %v", err)
	}
	_, err := c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: "never", Tokens: []int32{1}, OutRows: 1, TopK: 1}}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("step of an unknown session: %v, want NotFound", err)
	}
	for _, capLen := range []int32{0, -1, 1 << 20} {
		_, err := c.Open(ctx, &pb.OpenRequest{SessionId: "s", Capacity: capLen})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("open with capacity %d: %v, want InvalidArgument", capLen, err)
		}
	}
	for _, bl := range []int32{-1, 65} {
		_, err := c.Open(ctx, &pb.OpenRequest{SessionId: "s", Capacity: 64, BlockLength: bl})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "block_length") {
			t.Errorf("open with block length %d (capacity 64): %v, want InvalidArgument naming block_length", bl, err)
		}
	}
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: "s", Capacity: 64}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: "s", Capacity: 64}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second open: %v, want AlreadyExists", err)
	}
	_, err = c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: "s", StartPos: 5, Tokens: []int32{1}, OutRows: 1}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("step past the cache: %v, want InvalidArgument", err)
	}
	if a.Sessions() != 1 {
		t.Errorf("%d sessions, want 1", a.Sessions())
	}
	if _, err := c.Close(ctx, &pb.CloseRequest{SessionId: "s"}); err != nil || a.Sessions() != 0 {
		t.Errorf("close: %v, %d sessions left", err, a.Sessions())
	}
}

// TestStepMatchesLocal: one attnd step over two sessions equals the in-process model's step (ids
// exactly, logits to float rounding: the groups' partial sums are added in another order), and
// survives a dead replica (retried on the other replica of its group).
func TestStepMatchesLocal(t *testing.T) {
	reg := services.NewMemRegistry()
	dead := startExpertd(t, reg, "e0a", []int{0, 1, 2, 3, 4, 5, 6, 7})
	startExpertd(t, reg, "e0b", []int{0, 1, 2, 3, 4, 5, 6, 7})
	startExpertd(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
	a, c, _ := startAttnd(t, reg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	for len(a.Groups()) != 2 || a.Groups()[0] != "0-7×2" {
		if ctx.Err() != nil {
			t.Fatalf("groups %v", a.Groups())
		}
		time.Sleep(5 * time.Millisecond)
	}

	m, err := model.Load(context.Background(), tinyDir, cpu.New(), model.LoadOptions{Attention: true, Experts: model.AllExperts(16)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	seqs := [][]int32{{952, 2311, 449, 945, 1032, 197, 2728, 489}, {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 8190, 8190}}

	for round := 0; round < 2; round++ {
		if round == 1 {
			// the replica dies but stays registered: calls to it fail and are retried on e0b
			if err := dead.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		var caches []*model.Cache
		var local []model.StepSeq
		req := &pb.StepRequest{}
		for i, toks := range seqs {
			id := fmt.Sprintf("r%d-s%d", round, i)
			if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 32}); err != nil {
				t.Fatal(err)
			}
			req.Sessions = append(req.Sessions, &pb.SessionStep{SessionId: id, Tokens: toks, OutRows: int32(len(toks)), TopK: 3, InvTemperature: 1})
			cache, err := m.NewCache(32)
			if err != nil {
				t.Fatal(err)
			}
			caches = append(caches, cache)
			local = append(local, model.StepSeq{Cache: cache, Tokens: toks, OutRows: len(toks), TopK: 3, InvTemp: 1})
		}
		want, err := m.Step(context.Background(), local, 32, model.StepOptions{})
		for _, cache := range caches {
			cache.Free()
		}
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Step(ctx, req)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if resp.GetStats().GetDegraded() {
			t.Error("degraded with every expert served")
		}
		for i, r := range resp.GetResults() {
			w := want[i]
			ids := make([]int32, len(w.IDs))
			logits := make([]float32, len(w.Logits))
			lse := make([]float32, len(w.LSE))
			if err := wire.DecodeI32(ids, r.GetIds()); err != nil {
				t.Fatal(err)
			}
			if err := wire.DecodeF32(logits, r.GetLogits(), false); err != nil {
				t.Fatal(err)
			}
			if err := wire.DecodeF32(lse, r.GetLse(), false); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids, w.IDs) {
				t.Errorf("round %d session %d: ids %v, want %v", round, i, ids, w.IDs)
			}
			for j := range logits {
				if d := math.Abs(float64(logits[j] - w.Logits[j])); d > 1e-4 {
					t.Errorf("round %d session %d: logit %d = %v, want %v", round, i, j, logits[j], w.Logits[j])
					break
				}
			}
			for j := range lse {
				if d := math.Abs(float64(lse[j] - w.LSE[j])); d > 1e-4 {
					t.Errorf("round %d session %d: lse %d = %v, want %v", round, i, j, lse[j], w.LSE[j])
					break
				}
			}
		}
	}
}

// waitHealth polls the health service until it reports want.
func waitHealth(tb testing.TB, h healthpb.HealthClient, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) {
	tb.Helper()
	testutil.WaitFor(tb, fmt.Sprintf("health %v", want), within, func() bool { return health(tb, h) == want })
}

// oneStep opens a session, steps it once and closes it.
func oneStep(ctx context.Context, c pb.AttentionClient, id string) (*pb.StepResponse, error) {
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 32}); err != nil {
		return nil, err
	}
	defer c.Close(ctx, &pb.CloseRequest{SessionId: id})
	return c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: id, Tokens: []int32{952, 2311, 449, 945}, OutRows: 4, TopK: 1}}})
}

// TestHealthFollowsCoverage: once SERVING, attnd turns NOT_SERVING when the last replica of a
// group leaves discovery (steps fail with Unavailable naming the experts), and SERVING again
// when a replica of the group returns.
func TestHealthFollowsCoverage(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", []int{0, 1, 2, 3, 4, 5, 6, 7})
	startExpertd(t, reg, "e1a", []int{8, 9, 10, 11, 12, 13, 14, 15})
	a, c, h := startAttnd(t, reg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := oneStep(ctx, c, "covered"); err != nil {
		t.Fatalf("step with every expert served: %v", err)
	}
	if err := reg.Deregister(ctx, "e1a"); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, h, healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)
	_, err := oneStep(ctx, c, "lost")
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "8-15") {
		t.Errorf("step with experts 8-15 gone: %v, want Unavailable naming 8-15", err)
	}
	startExpertd(t, reg, "e1b", []int{8, 9, 10, 11, 12, 13, 14, 15})
	waitHealth(t, h, healthpb.HealthCheckResponse_SERVING, 10*time.Second)
	resp, err := oneStep(ctx, c, "back")
	if err != nil {
		t.Fatalf("step after the group returned: %v", err)
	}
	if resp.GetStats().GetDegraded() {
		t.Error("degraded with every expert served again")
	}
	if ins, _ := reg.Instances(ctx, services.KindAttnd); len(ins) != 1 {
		t.Errorf("attnd instances %v, want itself once", ins)
	}
}

// TestAllowMissingStaysServing: with AllowMissingExperts attnd serves as soon as top_k experts
// are served, stays SERVING when a group leaves, and its steps say they are degraded.
func TestAllowMissingStaysServing(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", []int{0, 1, 2, 3, 4, 5, 6, 7})
	a, c, h := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, AllowMissingExperts: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatalf("allow-missing attnd with experts 0-7: %v", err)
	}
	if st := health(t, h); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v, want SERVING", st)
	}
	resp, err := oneStep(ctx, c, "half")
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetStats().GetDegraded() {
		t.Error("step with experts 8-15 missing is not flagged degraded")
	}
	startExpertd(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
	for len(a.Groups()) != 2 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if resp, err = oneStep(ctx, c, "full"); err != nil || resp.GetStats().GetDegraded() {
		t.Fatalf("step with both groups: degraded %v, err %v", resp.GetStats().GetDegraded(), err)
	}
	if err := reg.Deregister(ctx, "e1"); err != nil {
		t.Fatal(err)
	}
	for len(a.Groups()) != 1 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if st := health(t, h); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v after group 1 left with allow-missing, want SERVING", st)
	}
	if resp, err = oneStep(ctx, c, "half-again"); err != nil || !resp.GetStats().GetDegraded() {
		t.Errorf("step after group 1 left: degraded %v, err %v; want a degraded answer", resp.GetStats().GetDegraded(), err)
	}
	// fewer than top_k (4) experts: not servable even degraded
	if err := reg.Deregister(ctx, "e0"); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, h, healthpb.HealthCheckResponse_NOT_SERVING, 10*time.Second)
}

// TestInfoReportsLoad: Info counts Step calls and errors, the open sessions and the KV cache
// positions they hold and reserve.
func TestInfoReportsLoad(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", model.AllExperts(16))
	a, c, _ := startAttnd(t, reg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	for id, capLen := range map[string]int32{"a": 32, "b": 64} {
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: capLen}); err != nil {
			t.Fatal(err)
		}
	}
	step := func(id string, pos int32, toks []int32) error {
		_, err := c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: id, StartPos: pos, Tokens: toks, OutRows: 1, TopK: 1}}})
		return err
	}
	if err := step("a", 0, []int32{952, 2311, 449, 945}); err != nil {
		t.Fatal(err)
	}
	if err := step("b", 0, []int32{5, 6}); err != nil {
		t.Fatal(err)
	}
	if err := step("b", 60, []int32{5, 6, 7, 8, 9}); err == nil {
		t.Fatal("step past the window succeeded")
	}
	info, err := c.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	l := info.GetLoad()
	if l.GetSessions() != 2 || l.GetKvTokens() != 6 || l.GetKvCapacityTokens() != 96 {
		t.Errorf("load %v: want 2 sessions holding 4+2 K/V positions of 32+64", l)
	}
	if l.GetCalls() != 2 || l.GetErrors() != 1 || l.GetInFlight() != 0 || l.GetWindowCalls() != 2 || l.GetP50Ms() <= 0 {
		t.Errorf("load %v: want 2 steps answered, 1 failed, latency measured", l)
	}
	if info.GetMeta()["groups"] != "[0-15×1]" || info.GetExperts() != 16 {
		t.Errorf("info meta %v experts %d", info.GetMeta(), info.GetExperts())
	}
	if _, err := c.Close(ctx, &pb.CloseRequest{SessionId: "a"}); err != nil {
		t.Fatal(err)
	}
	if l, _ := c.Info(ctx, &pb.InfoRequest{}); l.GetLoad().GetSessions() != 1 || l.GetLoad().GetKvTokens() != 2 || l.GetLoad().GetKvCapacityTokens() != 64 {
		t.Errorf("after closing a: load %v, want 1 session holding 2 of 64", l.GetLoad())
	}
}
