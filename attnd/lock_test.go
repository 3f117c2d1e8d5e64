package attnd_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// gatedExperts serves an expert group through a real expertd (not registered itself) but holds
// every Compute until open is closed, and reports the first one held on held.
type gatedExperts struct {
	pb.UnimplementedExpertsServer
	real     pb.ExpertsClient
	open     chan struct{}
	held     chan struct{}
	heldOnce sync.Once
	openOnce sync.Once
}

// release lets the held calls and every later one through.
func (g *gatedExperts) release() { g.openOnce.Do(func() { close(g.open) }) }

func (g *gatedExperts) Info(ctx context.Context, req *pb.InfoRequest) (*pb.ExpertSetInfo, error) {
	return g.real.Info(ctx, req)
}

func (g *gatedExperts) gate() {
	g.heldOnce.Do(func() { close(g.held) })
	<-g.open
}

func (g *gatedExperts) Compute(ctx context.Context, req *pb.ExpertsRequest) (*pb.ExpertsResponse, error) {
	g.gate()
	return g.real.Compute(ctx, req)
}

func (g *gatedExperts) ComputeStream(st grpc.BidiStreamingServer[pb.ExpertsRequest, pb.ExpertsResponse]) error {
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		g.gate()
		resp, err := g.real.Compute(st.Context(), req)
		if err != nil {
			return err
		}
		if err := st.Send(resp); err != nil {
			return err
		}
	}
}

// startGated registers a gated expert group for experts ids in reg.
func startGated(tb testing.TB, reg services.Registry, id string, ids []int) *gatedExperts {
	tb.Helper()
	e, err := expertd.New(context.Background(), expertd.Config{ModelDir: tinyDir, Experts: ids}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	cc, err := services.Dial(e.Addr(), services.ClientConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	g := &gatedExperts{real: pb.NewExpertsClient(cc), open: make(chan struct{}), held: make(chan struct{})}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterExpertsServer(srv, g)
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	tb.Cleanup(g.release)
	in := e.Instance(id)
	in.Addr = lis.Addr().String()
	if err := reg.Register(context.Background(), in); err != nil {
		tb.Fatal(err)
	}
	return g
}

// TestOpenCloseDoNotWaitForStep: while a step waits on an expert group, Open and Close of other
// sessions, and Close of a session in that very step, return at once; the step then completes
// (the closed session's cache is freed after it). Also on a backend that is not
// kernels.Concurrent, where Open and Close take the backend while the step waits on experts.
func TestOpenCloseDoNotWaitForStep(t *testing.T) {
	for _, tc := range []struct {
		name string
		be   func() kernels.Backend
	}{
		{"concurrent", func() kernels.Backend { return cpu.New() }},
		{"exclusive", func() kernels.Backend { return &exclusive{Backend: cpu.New()} }},
	} {
		t.Run(tc.name, func(t *testing.T) { testOpenCloseDuringStep(t, tc.be()) })
	}
}

func testOpenCloseDuringStep(t *testing.T, be kernels.Backend) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", []int{0, 1, 2, 3, 4, 5, 6, 7})
	g := startGated(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
	a, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, NewBackend: func() (kernels.Backend, error) { return be, nil }})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"stepping", "idle"} {
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 32}); err != nil {
			t.Fatal(err)
		}
	}
	stepErr := make(chan error, 1)
	go func() {
		_, err := c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{
			{SessionId: "stepping", Tokens: []int32{5, 6, 7, 8, 9, 10, 11, 12}, OutRows: 8, TopK: 1}}})
		stepErr <- err
	}()
	select {
	case <-g.held:
	case <-ctx.Done():
		t.Fatal("the step never reached the gated group")
	}
	quick, qcancel := context.WithTimeout(ctx, 5*time.Second)
	defer qcancel()
	if _, err := c.Open(quick, &pb.OpenRequest{SessionId: "new", Capacity: 32}); err != nil {
		t.Errorf("open during a step: %v", err)
	}
	for _, id := range []string{"idle", "stepping"} {
		if _, err := c.Close(quick, &pb.CloseRequest{SessionId: id}); err != nil {
			t.Errorf("close %s during a step: %v", id, err)
		}
	}
	if n := a.Sessions(); n != 1 {
		t.Errorf("%d sessions open during the step, want 1 (new)", n)
	}
	select {
	case err := <-stepErr:
		t.Fatalf("the step ended before its experts answered: %v", err)
	default:
	}
	g.release()
	if err := <-stepErr; err != nil {
		t.Errorf("step whose session was closed meanwhile: %v", err)
	}
	if l := a.Load(); l.GetSessions() != 1 || l.GetKvCapacityTokens() != 32 {
		t.Errorf("load after the step: %d sessions, %d capacity; want 1, 32", l.GetSessions(), l.GetKvCapacityTokens())
	}
}
