package services

import (
	"context"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestLivenessService: the liveness service is SERVING while the server runs, whatever
// SetServing says, and NOT_SERVING once it stops.
func TestLivenessService(t *testing.T) {
	ts := startServer(t, ServerConfig{}, func(*Server) {})
	hc := healthpb.NewHealthClient(ts.dial(t, ClientConfig{}))

	checkHealth(t, hc, "", healthpb.HealthCheckResponse_NOT_SERVING)
	checkHealth(t, hc, LivenessService, healthpb.HealthCheckResponse_SERVING)
	ts.SetServing(true)
	checkHealth(t, hc, LivenessService, healthpb.HealthCheckResponse_SERVING)
	ts.SetServing(false)
	checkHealth(t, hc, "", healthpb.HealthCheckResponse_NOT_SERVING)
	checkHealth(t, hc, LivenessService, healthpb.HealthCheckResponse_SERVING)

	wctx, wcancel := context.WithCancel(t.Context())
	defer wcancel()
	watch, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{Service: LivenessService})
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
		stopped <- ts.Stop(ctx)
	}()
	if ev, err := watch.Recv(); err != nil || ev.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch event after Stop %v, %v; want NOT_SERVING", ev, err)
	}
	wcancel()
	if err := <-stopped; err != nil {
		t.Errorf("Stop: %v", err)
	}
}
