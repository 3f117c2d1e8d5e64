package failover_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/attnd"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/consultest"

	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/internal/testutil"
)

// startAttnd starts an attnd discovering through reg and dials it.
func startAttnd(t *testing.T, reg services.Registry, cfg attnd.Config) (*attnd.Server, pb.AttentionClient, healthpb.HealthClient) {
	t.Helper()
	cfg.ModelDir = tinyDir
	a, err := attnd.New(context.Background(), cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := services.Dial(a.Addr(), services.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		_ = a.Shutdown(context.Background())
	})
	return a, pb.NewAttentionClient(cc), healthpb.NewHealthClient(cc)
}

func healthOf(t *testing.T, h healthpb.HealthClient) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	r, err := h.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetStatus()
}

// passingAttnd lists the IDs of the attnd instances Consul reports passing.
func passingAttnd(reg services.Registry) []string {
	l, _ := reg.Instances(context.Background(), services.KindAttnd)
	var ids []string
	for _, in := range l {
		ids = append(ids, in.ID)
	}
	return ids
}

// stepOnce opens a session on c, steps it once and closes it.
func stepOnce(ctx context.Context, c pb.AttentionClient, id string) (*pb.StepResponse, error) {
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 32}); err != nil {
		return nil, err
	}
	defer c.Close(ctx, &pb.CloseRequest{SessionId: id})
	return c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: id, Tokens: []int32{952, 2311, 449, 945}, OutRows: 4, TopK: 1}}})
}

// TestAttndHealthFollowsCoverageThroughConsul: two attnd over one replica per expert group,
// discovering through a real Consul agent, one of them with AllowMissingExperts. When the group-1
// replica dies (its check turns critical) the strict attnd reports NOT_SERVING, so Consul stops
// listing it, and its steps fail with Unavailable naming experts 8-15; the allow-missing one
// stays passing and answers degraded steps. When a new group-1 replica registers, the strict
// attnd is SERVING and passing again.
func TestAttndHealthFollowsCoverageThroughConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Consul agent; skipped with -short")
	}
	agent := consultest.Start(t)
	c, groups := newCluster(t, agent.Addr, 200*time.Millisecond)
	reg := c.reg
	c.addReplica(t, 0, groups[0])
	g1 := c.addReplica(t, 1, groups[1])
	strict, sc, sh := startAttnd(t, reg, attnd.Config{ID: "attnd-strict"})
	_, lc, lh := startAttnd(t, reg, attnd.Config{ID: "attnd-lenient", AllowMissingExperts: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := strict.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	both := []string{"attnd-lenient", "attnd-strict"}
	testutil.WaitFor(t, "both attnd passing in Consul", 15*time.Second, func() bool { return slices.Equal(passingAttnd(reg), both) })
	if _, err := stepOnce(ctx, sc, "covered"); err != nil {
		t.Fatalf("step with every expert served: %v", err)
	}

	lost := time.Now()
	kill(g1) // stays registered; its gRPC check turns critical
	testutil.WaitFor(t, "strict attnd NOT_SERVING", 15*time.Second, func() bool {
		return healthOf(t, sh) == healthpb.HealthCheckResponse_NOT_SERVING
	})
	notServing := time.Since(lost)
	testutil.WaitFor(t, "strict attnd out of Consul's passing list", 15*time.Second, func() bool {
		return slices.Equal(passingAttnd(reg), []string{"attnd-lenient"})
	})
	t.Logf("group 1 killed: strict attnd NOT_SERVING after %v, out of discovery after %v",
		notServing.Round(time.Millisecond), time.Since(lost).Round(time.Millisecond))
	_, err := stepOnce(ctx, sc, "lost")
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "8-15") {
		t.Errorf("strict step with group 1 gone: %v, want Unavailable naming 8-15", err)
	}
	if st := healthOf(t, lh); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("allow-missing attnd health %v with group 1 gone, want SERVING", st)
	}
	resp, err := stepOnce(ctx, lc, "degraded")
	if err != nil || !resp.GetStats().GetDegraded() {
		t.Errorf("allow-missing step with group 1 gone: degraded %v, err %v; want a degraded answer", resp.GetStats().GetDegraded(), err)
	}

	back := time.Now()
	c.addReplica(t, 1, groups[1])
	testutil.WaitFor(t, "strict attnd SERVING again", 15*time.Second, func() bool {
		return healthOf(t, sh) == healthpb.HealthCheckResponse_SERVING
	})
	testutil.WaitFor(t, "strict attnd passing in Consul again", 15*time.Second, func() bool { return slices.Equal(passingAttnd(reg), both) })
	t.Logf("group 1 back: strict attnd passing again after %v", time.Since(back).Round(time.Millisecond))
	if resp, err := stepOnce(ctx, sc, "back"); err != nil || resp.GetStats().GetDegraded() {
		t.Errorf("strict step after group 1 returned: degraded %v, err %v", resp.GetStats().GetDegraded(), err)
	}
}

// TestDegradedServingEndToEnd: gateway + an attnd with AllowMissingExperts + only the group-0
// expertd, through Consul. A Generate stream completes, its FinalEvent says degraded, the output
// is deterministic (two runs equal) and differs from the full mesh's; once a group-1 expertd
// registers, later requests are not degraded and match the full mesh's output.
func TestDegradedServingEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Consul agent and a mesh; skipped with -short")
	}
	agent := consultest.Start(t)
	f := fixtures.LoadGen(t)
	gc := f.Cases[0]
	full := references(t, f, []genCase{gc})[0]

	c, groups := newCluster(t, agent.Addr, 200*time.Millisecond)
	reg := c.reg
	c.addReplica(t, 0, groups[0])
	a, _, _ := startAttnd(t, reg, attnd.Config{ID: "attnd-0", AllowMissingExperts: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatalf("allow-missing attnd with experts 0-7 only: %v", err)
	}
	c.startGateway(t, ctx)
	testutil.WaitFor(t, "attnd passing in Consul", 15*time.Second, func() bool { return len(passingAttnd(reg)) == 1 })

	run := func(id string) *pb.FinalEvent {
		t.Helper()
		var fin *pb.FinalEvent
		testutil.WaitFor(t, "a stream through the gateway", 30*time.Second, func() bool { // the gateway's watch may lag
			req := &pb.GenerateRequest{RequestId: id, Input: &pb.GenerateRequest_Prompt{Prompt: gc.Prompt},
				Params: &pb.DecodeParams{Mode: gc.Mode, GenLength: genLen, BlockLength: int32(gc.BlockLength)}}
			var err error
			steps, degradedSteps := 0, 0
			fin, err = c.client.Generate(ctx, req, func(ev *pb.GenerateEvent) error {
				if st := ev.GetStep(); st != nil {
					steps++
					if st.GetDegraded() {
						degradedSteps++
					}
				}
				return nil
			})
			if err == nil && degradedSteps != 0 && degradedSteps != steps {
				t.Errorf("%s: %d of %d step events marked degraded, want all or none", id, degradedSteps, steps)
			}
			if err == nil && (degradedSteps > 0) != fin.GetDegraded() {
				t.Errorf("%s: %d degraded step events, final degraded %v", id, degradedSteps, fin.GetDegraded())
			}
			if err != nil && status.Code(err) != codes.Unavailable {
				t.Fatalf("%s: %v", id, err)
			}
			return err == nil
		})
		return fin
	}
	d1, d2 := run("degraded-1"), run("degraded-2")
	for i, d := range []*pb.FinalEvent{d1, d2} {
		if !d.GetDegraded() {
			t.Errorf("run %d with experts 8-15 missing: final event not marked degraded", i+1)
		}
		if len(d.GetTokenIds()) == 0 || d.GetUsage().GetForwards() == 0 {
			t.Errorf("run %d: empty output %+v", i+1, d)
		}
	}
	if !slices.Equal(d1.GetTokenIds(), d2.GetTokenIds()) {
		t.Errorf("degraded output is not deterministic:\n%v\n%v", d1.GetTokenIds(), d2.GetTokenIds())
	}
	if slices.Equal(d1.GetTokenIds(), full) {
		t.Errorf("degraded output equals the full mesh's %v: the missing experts changed nothing", full)
	}
	t.Logf("degraded: %q\nfull:     %d ids", d1.GetText(), len(full))

	c.addReplica(t, 1, groups[1])
	testutil.WaitFor(t, "attnd routing to both groups", 15*time.Second, func() bool { return len(a.Groups()) == 2 })
	fin := run("full")
	if fin.GetDegraded() {
		t.Error("request after group 1 registered is still degraded")
	}
	if !slices.Equal(fin.GetTokenIds(), full) {
		t.Errorf("output with both groups differs from the full mesh's\n got %v\nwant %v", fin.GetTokenIds(), full)
	}
}
