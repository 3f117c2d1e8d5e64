package attnd_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/expertd"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// hangingReplica serves an expertd's Experts service on its own port; while hang is set its
// Compute blocks until the call's context ends (a SIGSTOPped replica: the connection stays up,
// nothing answers).
type hangingReplica struct {
	pb.UnimplementedExpertsServer
	e    *expertd.Server
	hang atomic.Bool
	hung atomic.Int64 // Compute calls that hung
}

func (h *hangingReplica) Info(ctx context.Context, req *pb.InfoRequest) (*pb.ExpertSetInfo, error) {
	return h.e.Info(ctx, req)
}

func (h *hangingReplica) Compute(ctx context.Context, req *pb.ExpertsRequest) (*pb.ExpertsResponse, error) {
	if h.hang.Load() {
		h.hung.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return h.e.Compute(ctx, req)
}

// ComputeStream is attnd's hot path: each request answered as Compute would, or, while hang is
// set, never (the stream stays open until the caller gives up on it).
func (h *hangingReplica) ComputeStream(st grpc.BidiStreamingServer[pb.ExpertsRequest, pb.ExpertsResponse]) error {
	for {
		req, err := st.Recv()
		if err != nil {
			return nil
		}
		if h.hang.Load() {
			h.hung.Add(1)
			<-st.Context().Done()
			return st.Context().Err()
		}
		resp, err := h.e.Compute(st.Context(), req)
		if err != nil {
			return err
		}
		if err := st.Send(resp); err != nil {
			return err
		}
	}
}

func startHangingReplica(tb testing.TB, reg services.Registry, id string, ids []int) *hangingReplica {
	tb.Helper()
	e, err := expertd.New(context.Background(), expertd.Config{ModelDir: tinyDir, Experts: ids}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	h := &hangingReplica{e: e}
	srv := services.NewServer(services.ServerConfig{})
	pb.RegisterExpertsServer(srv, h)
	srv.SetServing(true)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	tb.Cleanup(func() {
		h.hang.Store(false)
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // cut the hung calls
		_ = srv.Stop(ctx)
		<-served
		_ = e.Shutdown(context.Background())
	})
	in := e.Instance(id)
	in.Addr = lis.Addr().String()
	if err := reg.Register(context.Background(), in); err != nil {
		tb.Fatal(err)
	}
	return h
}

// TestHungReplicaStallPerStep: one of the two replicas of a group hangs. Each attnd step then
// costs at most about one hedge delay more than before (calls to the hung replica are answered by
// the other after the delay, and the hung one is passed over while its call is stuck), never the
// expert timeout.
func TestHungReplicaStallPerStep(t *testing.T) {
	reg := services.NewMemRegistry()
	hung := startHangingReplica(t, reg, "e0a", []int{0, 1, 2, 3, 4, 5, 6, 7})
	startExpertd(t, reg, "e0b", []int{0, 1, 2, 3, 4, 5, 6, 7})
	startExpertd(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
	const expertTimeout = 4 * time.Second
	a, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, ExpertTimeout: expertTimeout})
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
	steps := func(n int, tag string) (worst, total time.Duration) {
		for i := range n {
			t0 := time.Now()
			if _, err := oneStep(ctx, c, fmt.Sprint(tag, i)); err != nil {
				t.Fatalf("%s step %d: %v", tag, i, err)
			}
			d := time.Since(t0)
			worst, total = max(worst, d), total+d
		}
		return worst, total
	}
	steps(6, "warm") // latencies for the hedge delay
	baseWorst, baseTotal := steps(6, "base")
	hung.hang.Store(true)
	const n = 6
	hungWorst, hungTotal := steps(n, "hung")
	stall := (hungTotal - baseTotal) / n
	t.Logf("per step: %v before, %v with a replica hung (stall %v per step); worst %v before, %v hung; %d calls hung",
		baseTotal/n, hungTotal/n, stall, baseWorst, hungWorst, hung.hung.Load())
	if hung.hung.Load() == 0 {
		t.Fatal("no call reached the hung replica: nothing was tested")
	}
	if hungWorst >= expertTimeout/2 {
		t.Errorf("worst step %v with a replica hung: it waited for the expert timeout (%v), not a hedge delay", hungWorst, expertTimeout)
	}
}
