package gateway

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// TestRemoteSessionIDs: two gateways (two steppers) sharing an attnd give the same engine session
// different attnd session ids, so requests with equal ids never collide there.
func TestRemoteSessionIDs(t *testing.T) {
	a, b := NewRemoteStepper(nil, 0, 0), NewRemoteStepper(nil, 0, 0)
	ia, ib := a.remoteID("req#1"), b.remoteID("req#1")
	if ia == ib {
		t.Fatalf("two steppers both use attnd session id %q", ia)
	}
	for _, id := range []string{ia, ib} {
		if !strings.HasSuffix(id, "/req#1") {
			t.Errorf("attnd session id %q does not end with the engine's", id)
		}
	}
	if a.remoteID("req#2") == ia || a.remoteID("req#1") != ia {
		t.Error("a stepper's attnd session ids are not a function of the engine's")
	}
}

// TestStepDeadline: a Step gets the whole step timeout while its attnd is the only one or the
// pool has too few answered steps for a p99; then max(floor, multiplier × rows × p99 per row),
// never more than the step timeout; a negative floor keeps the step timeout.
func TestStepDeadline(t *testing.T) {
	newPool := func(n int) *services.Pool {
		pool := services.NewPool("attnd", services.BreakerConfig{}, func(in services.Instance) (*grpc.ClientConn, error) {
			return grpc.NewClient(in.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		})
		t.Cleanup(func() { pool.Close() })
		var ins []services.Instance
		for i := range n {
			ins = append(ins, services.Instance{ID: fmt.Sprint("a", i), Kind: services.KindAttnd, Addr: fmt.Sprint("127.0.0.1:", i+1)})
		}
		if err := pool.Update(ins); err != nil {
			t.Fatal(err)
		}
		return pool
	}
	const timeout = 60 * time.Second
	stepper := func(pool *services.Pool, samples int, perStep time.Duration, rows int) *RemoteStepper {
		st := NewRemoteStepper(pool, timeout, time.Second)
		st.SetStall(2*time.Second, 8)
		for range samples {
			st.observeStep(perStep, rows)
		}
		return st
	}
	tests := []struct {
		name     string
		attnd    int
		samples  int
		perStep  time.Duration // of 32-row steps
		rows     int           // of the next step
		want     time.Duration
		stallOff bool
	}{
		{"one attnd", 1, 256, 32 * time.Millisecond, 32, timeout, false},
		{"too few samples", 2, stallMinSamples - 1, 32 * time.Millisecond, 32, timeout, false},
		{"fast steps: the floor", 2, 256, 32 * time.Millisecond, 32, 2 * time.Second, false},
		{"a prefill chunk after fast steps", 2, 256, 32 * time.Millisecond, 512, 8 * 512 * time.Millisecond, false},
		{"slow steps", 2, 256, 320 * time.Millisecond, 32, 8 * 320 * time.Millisecond, false},
		{"capped by the step timeout", 2, 256, 10 * time.Second, 32, timeout, false},
		{"stall deadline off", 2, 256, 32 * time.Millisecond, 32, timeout, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := stepper(newPool(tc.attnd), tc.samples, tc.perStep, 32)
			if tc.stallOff {
				st.SetStall(-1, 8)
			}
			if d := st.stepDeadline(tc.rows); d != tc.want {
				t.Fatalf("deadline %v, want %v", d, tc.want)
			}
		})
	}
}

// openOnly is an attnd that answers Open and health.
type openOnly struct {
	pb.UnimplementedAttentionServer
	opens atomic.Int32
}

func (o *openOnly) Open(context.Context, *pb.OpenRequest) (*pb.OpenResponse, error) {
	o.opens.Add(1)
	return &pb.OpenResponse{}, nil
}

// TestOpenRevivesServingAttnd: when every attnd's breaker is open, Open checks their health and
// closes the breaker of one that serves instead of failing until the breaker's open timeout.
func TestOpenRevivesServingAttnd(t *testing.T) {
	srv := services.NewServer(services.ServerConfig{})
	att := &openOnly{}
	pb.RegisterAttentionServer(srv, att)
	srv.SetServing(true)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	pool := services.NewPool("attnd", services.BreakerConfig{Failures: 2, OpenTimeout: time.Hour}, func(in services.Instance) (*grpc.ClientConn, error) {
		return services.Dial(in.Addr, services.ClientConfig{})
	})
	t.Cleanup(func() { pool.Close() })
	if err := pool.Update([]services.Instance{{ID: "a0", Kind: services.KindAttnd, Addr: lis.Addr().String()}}); err != nil {
		t.Fatal(err)
	}
	st := NewRemoteStepper(pool, time.Minute, 5*time.Second)
	t.Cleanup(st.Stop)
	r, done, err := pool.Pick()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the attnd was down a moment ago: its breaker opened
		_ = r.Breaker().Do(context.Background(), func(context.Context) error { return status.Error(codes.Unavailable, "down") })
	}
	done()
	if r.Breaker().State() != services.BreakerOpen {
		t.Fatalf("breaker %v, want open", r.Breaker().State())
	}
	if err := st.Open(context.Background(), "s", 64, 32); err != nil {
		t.Fatalf("Open with the only attnd's breaker open but the attnd serving: %v", err)
	}
	if att.opens.Load() != 1 || r.Breaker().State() != services.BreakerClosed {
		t.Fatalf("%d opens reached the attnd, breaker %v; want 1 and closed", att.opens.Load(), r.Breaker().State())
	}
	srv.SetServing(false) // an attnd that does not serve stays behind its open breaker
	for range 2 {
		_ = r.Breaker().Do(context.Background(), func(context.Context) error { return status.Error(codes.Unavailable, "down") })
	}
	if err := st.Open(context.Background(), "s2", 64, 32); err == nil {
		t.Fatal("Open succeeded through the open breaker of an attnd NOT_SERVING")
	}
}
