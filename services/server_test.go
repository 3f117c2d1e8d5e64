package services

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

func checkHealth(tb testing.TB, hc healthpb.HealthClient, service string, want healthpb.HealthCheckResponse_ServingStatus) {
	tb.Helper()
	resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		tb.Fatalf("health check %q: %v", service, err)
	}
	if resp.GetStatus() != want {
		tb.Errorf("health %q = %v, want %v", service, resp.GetStatus(), want)
	}
}

func TestHealth(t *testing.T) {
	ts := startServer(t, ServerConfig{}, func(s *Server) {
		pb.RegisterExpertsServer(s, &fakeExperts{})
	})
	hc := healthpb.NewHealthClient(ts.dial(t, ClientConfig{}))
	experts := pb.Experts_ServiceDesc.ServiceName

	checkHealth(t, hc, "", healthpb.HealthCheckResponse_NOT_SERVING)
	checkHealth(t, hc, experts, healthpb.HealthCheckResponse_NOT_SERVING)

	ts.SetServing(true)
	checkHealth(t, hc, "", healthpb.HealthCheckResponse_SERVING)
	checkHealth(t, hc, experts, healthpb.HealthCheckResponse_SERVING)

	ts.SetServing(false)
	checkHealth(t, hc, experts, healthpb.HealthCheckResponse_NOT_SERVING)
	ts.SetServing(true)

	// A watcher sees the flip to NOT_SERVING when the server stops.
	stopWatched(t, hc, ts.Server, experts)
	ts.SetServing(true) // no effect after Stop
	if ts.serving {
		t.Error("SetServing after Stop took effect")
	}
}

func TestLargeMessages(t *testing.T) {
	ts := startServer(t, ServerConfig{}, func(s *Server) {
		pb.RegisterExpertsServer(s, &fakeExperts{})
	})
	client := pb.NewExpertsClient(ts.dial(t, ClientConfig{}))
	// 16 MiB: four times grpc's default limit; an f32 batch of 2048 rows x 2048 hidden.
	x := bytes.Repeat([]byte{1, 2, 3, 4}, 4<<20)
	resp, err := client.Compute(t.Context(), &pb.ExpertsRequest{Dtype: pb.DType_DTYPE_F32, X: x})
	if err != nil {
		t.Fatalf("16 MiB Compute: %v", err)
	}
	if !bytes.Equal(resp.GetY(), x) {
		t.Error("echoed tensor differs")
	}

	small := startServer(t, ServerConfig{MaxRecvMsgBytes: 1 << 20}, func(s *Server) {
		pb.RegisterExpertsServer(s, &fakeExperts{})
	})
	_, err = pb.NewExpertsClient(small.dial(t, ClientConfig{})).Compute(t.Context(), &pb.ExpertsRequest{X: x})
	if got := status.Code(err); got != codes.ResourceExhausted {
		t.Errorf("over the server's limit: %v, want ResourceExhausted", err)
	}
}

func TestCallTimeout(t *testing.T) {
	ts := startServer(t, ServerConfig{}, func(s *Server) {
		pb.RegisterExpertsServer(s, &fakeExperts{block: true})
	})
	client := pb.NewExpertsClient(ts.dial(t, ClientConfig{CallTimeout: 50 * time.Millisecond}))
	start := time.Now()
	_, err := client.Compute(t.Context(), &pb.ExpertsRequest{})
	if got := status.Code(err); got != codes.DeadlineExceeded {
		t.Errorf("blocked call: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("default deadline took %v", d)
	}

	// WithTimeout never extends an earlier deadline and d <= 0 adds none.
	parent, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	pd, _ := parent.Deadline()
	ctx, cancel2 := WithTimeout(parent, time.Hour)
	defer cancel2()
	if d, _ := ctx.Deadline(); !d.Equal(pd) {
		t.Errorf("WithTimeout extended the deadline to %v", d)
	}
	ctx3, cancel3 := WithTimeout(context.Background(), 0)
	defer cancel3()
	if _, ok := ctx3.Deadline(); ok {
		t.Error("WithTimeout(0) set a deadline")
	}
}

// slowGateway streams one step event, then waits for release (or the call's end) before the
// final event.
type slowGateway struct {
	pb.UnimplementedGatewayServer
	started chan struct{}
	release chan struct{}
}

func (g *slowGateway) Generate(req *pb.GenerateRequest, stream pb.Gateway_GenerateServer) error {
	if err := stream.Send(&pb.GenerateEvent{Event: &pb.GenerateEvent_Step{Step: &pb.StepEvent{Block: 0, Step: 0}}}); err != nil {
		return err
	}
	close(g.started)
	select {
	case <-g.release:
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	return stream.Send(&pb.GenerateEvent{Event: &pb.GenerateEvent_Final{Final: &pb.FinalEvent{Text: "done", FinishReason: "eos"}}})
}

func TestGracefulStopWaitsForStream(t *testing.T) {
	g := &slowGateway{started: make(chan struct{}), release: make(chan struct{})}
	ts := startServer(t, ServerConfig{}, func(s *Server) { pb.RegisterGatewayServer(s, g) })
	ts.SetServing(true)
	cc := ts.dial(t, ClientConfig{})
	stream, err := pb.NewGatewayClient(cc).Generate(t.Context(), &pb.GenerateRequest{RequestId: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	<-g.started

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- ts.Stop(ctx)
	}()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while a stream was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	// New calls are refused while draining.
	nctx, ncancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer ncancel()
	if _, err := pb.NewExpertsClient(cc).Info(nctx, &pb.InfoRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("new call while draining: %v, want Unavailable", err)
	}
	close(g.release)
	ev, err := stream.Recv()
	if err != nil {
		t.Fatalf("final event: %v", err)
	}
	if ev.GetFinal().GetText() != "done" {
		t.Errorf("final event %v", ev)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Stop: %v", err)
	}
}

func TestStopCutsAfterDeadline(t *testing.T) {
	g := &slowGateway{started: make(chan struct{}), release: make(chan struct{})}
	ts := startServer(t, ServerConfig{}, func(s *Server) { pb.RegisterGatewayServer(s, g) })
	stream, err := pb.NewGatewayClient(ts.dial(t, ClientConfig{})).Generate(t.Context(), &pb.GenerateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := ts.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop = %v, want DeadlineExceeded", err)
	}
	if _, err := stream.Recv(); err == nil {
		t.Error("stream survived a hard stop")
	}
}

// stopWatched watches service's health, stops srv, and checks that the watcher saw SERVING
// and then NOT_SERVING, and that the graceful stop finished.
func stopWatched(t *testing.T, hc healthpb.HealthClient, srv *Server, service string) {
	t.Helper()
	wctx, wcancel := context.WithCancel(t.Context())
	defer wcancel()
	watch, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := watch.Recv(); err != nil || ev.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first watch event %v, %v; want SERVING", ev, err)
	}
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopped <- srv.Stop(ctx)
	}()
	if ev, err := watch.Recv(); err != nil || ev.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch event after Stop %v, %v; want NOT_SERVING", ev, err)
	}
	wcancel() // the open Watch is an in-flight call: end it so the graceful stop can finish
	if err := <-stopped; err != nil {
		t.Errorf("Stop: %v", err)
	}
}
