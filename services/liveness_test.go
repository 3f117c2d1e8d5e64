package services

import (
	"testing"

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

	stopWatched(t, hc, ts.Server, LivenessService)
}
