package gateway

import (
	"context"
	"fmt"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/dlmesh/dlmesh/services"
)

// attndProbeTimeout bounds one health probe of WaitAttnd.
const attndProbeTimeout = 2 * time.Second

// WaitAttnd blocks until an attnd of the pool answers its health check with SERVING, and returns
// that attnd's instance ID; or until ctx ends, with an error saying what the attnd instances
// answered last (none known, unreachable, NOT_SERVING). It probes every interval (250 ms when not
// positive). Requests sent before it returns may fail with Unavailable.
func (s *Server) WaitAttnd(ctx context.Context, interval time.Duration) (string, error) {
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	last := "no attnd known"
	for {
		for _, st := range s.pool.Status() {
			id, ok, why := s.probeAttnd(ctx, st.Instance)
			if ok {
				return id, nil
			}
			last = why
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("gateway: no serving attnd (%s): %w", last, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// probeAttnd checks the health of one attnd of the pool.
func (s *Server) probeAttnd(ctx context.Context, in services.Instance) (id string, ok bool, why string) {
	r, done, err := s.pool.Pick()
	if err != nil {
		return "", false, err.Error()
	}
	defer done()
	if r.Instance().ID != in.ID { // Pick balances: probe whichever it gave
		in = r.Instance()
	}
	if r.Conn() == nil {
		return "", false, "attnd " + in.ID + " has no connection"
	}
	pctx, cancel := context.WithTimeout(ctx, attndProbeTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(r.Conn()).Check(pctx, &healthpb.HealthCheckRequest{})
	switch {
	case err != nil:
		return "", false, fmt.Sprintf("attnd %s at %s: %v", in.ID, in.Addr, err)
	case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
		return "", false, fmt.Sprintf("attnd %s at %s is %s", in.ID, in.Addr, resp.GetStatus())
	}
	return in.ID, true, ""
}
