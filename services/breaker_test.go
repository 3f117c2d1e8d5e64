package services

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/errdefs"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

func TestBreakerCounts(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		trips bool
	}{
		{"unavailable", status.Error(codes.Unavailable, "connection refused"), true},
		{"deadline status", status.Error(codes.DeadlineExceeded, "slow"), true},
		{"deadline context", fmt.Errorf("compute: %w", context.DeadlineExceeded), true},
		{"resource exhausted", status.Error(codes.ResourceExhausted, "queue full"), true},
		{"overloaded sentinel", errdefs.ErrOverloaded, true},
		{"internal", status.Error(codes.Internal, "cuda"), true},
		{"plain error", errors.New("boom"), true},
		{"invalid argument", status.Error(codes.InvalidArgument, "rows"), false},
		{"invalid sentinel", fmt.Errorf("x: %w", errdefs.ErrInvalidArgument), false},
		{"not found", status.Error(codes.NotFound, "session"), false},
		{"canceled status", status.Error(codes.Canceled, "client went away"), false},
		{"canceled context", context.Canceled, false},
		{"success", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBreaker("expertd-g0-r0", BreakerConfig{Failures: 3, OpenTimeout: time.Hour})
			for i := range 10 {
				err := b.Do(t.Context(), func(context.Context) error { return tt.err })
				if errors.Is(err, ErrBreakerOpen) {
					if !tt.trips {
						t.Fatalf("call %d: breaker opened on %v", i, tt.err)
					}
					if i != 3 {
						t.Errorf("opened at call %d, want after 3 failures", i)
					}
					if !strings.Contains(err.Error(), "expertd-g0-r0") {
						t.Errorf("error %q does not name the instance", err)
					}
					if CodeOf(err) != codes.Unavailable {
						t.Errorf("open breaker maps to %v, want Unavailable", CodeOf(err))
					}
					return
				}
				if err != tt.err {
					t.Fatalf("Do changed fn's error: %v", err)
				}
			}
			if tt.trips {
				t.Errorf("breaker never opened on %v (state %v)", tt.err, b.State())
			}
			if b.State() != BreakerClosed {
				t.Errorf("state %v, want closed", b.State())
			}
		})
	}
}

func TestBreakerRecovers(t *testing.T) {
	b := NewBreaker("r", BreakerConfig{Failures: 2, OpenTimeout: 50 * time.Millisecond})
	fail := func(context.Context) error { return status.Error(codes.Unavailable, "down") }
	called := 0
	ok := func(context.Context) error { called++; return nil }
	_ = b.Do(t.Context(), fail)
	_ = b.Do(t.Context(), fail)
	if b.State() != BreakerOpen {
		t.Fatalf("state %v after 2 failures, want open", b.State())
	}
	if err := b.Do(t.Context(), ok); !errors.Is(err, ErrBreakerOpen) || called != 0 {
		t.Fatalf("open breaker let a call through: %v, called %d", err, called)
	}
	time.Sleep(60 * time.Millisecond)
	if b.State() != BreakerHalfOpen {
		t.Fatalf("state %v after the timeout, want half-open", b.State())
	}
	if err := b.Do(t.Context(), ok); err != nil || called != 1 {
		t.Fatalf("probe: %v, called %d", err, called)
	}
	if b.State() != BreakerClosed {
		t.Errorf("state %v after a good probe, want closed", b.State())
	}
}

// TestBreakerReset: Reset closes an open breaker at once, with fresh counts.
func TestBreakerReset(t *testing.T) {
	b := NewBreaker("r", BreakerConfig{Failures: 2, OpenTimeout: time.Hour})
	fail := func(context.Context) error { return status.Error(codes.Unavailable, "down") }
	called := 0
	ok := func(context.Context) error { called++; return nil }
	_ = b.Do(t.Context(), fail)
	_ = b.Do(t.Context(), fail)
	if err := b.Do(t.Context(), ok); !errors.Is(err, ErrBreakerOpen) || called != 0 {
		t.Fatalf("open breaker let a call through: %v, called %d", err, called)
	}
	b.Reset()
	if b.State() != BreakerClosed {
		t.Fatalf("state %v after Reset, want closed", b.State())
	}
	if err := b.Do(t.Context(), ok); err != nil || called != 1 {
		t.Fatalf("call after Reset: %v, called %d", err, called)
	}
	_ = b.Do(t.Context(), fail) // fresh counts: one failure does not open it again
	if b.State() != BreakerClosed {
		t.Fatalf("state %v after one failure past Reset, want closed", b.State())
	}
}

func TestBreakerSkipsEndedContext(t *testing.T) {
	b := NewBreaker("r", BreakerConfig{Failures: 1})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	called := false
	if err := b.Do(ctx, func(context.Context) error { called = true; return nil }); !errors.Is(err, context.Canceled) || called {
		t.Errorf("Do on an ended context: %v, called %v", err, called)
	}
}

// Over the wire: a replica answering Unavailable trips its breaker, one rejecting bad requests
// does not.
func TestBreakerOverGRPC(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		trips bool
	}{
		{"unavailable", fmt.Errorf("expertd: %w", ErrNoReplica), true},
		{"invalid", fmt.Errorf("expertd: hidden 3 != 256: %w", errdefs.ErrInvalidArgument), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, ServerConfig{}, func(s *Server) {
				pb.RegisterExpertsServer(s, &fakeExperts{err: tt.err})
			})
			client := pb.NewExpertsClient(ts.dial(t, ClientConfig{}))
			b := NewBreaker("bufnet", BreakerConfig{Failures: 2, OpenTimeout: time.Hour})
			for range 4 {
				_ = b.Do(t.Context(), func(ctx context.Context) error {
					_, err := client.Compute(ctx, &pb.ExpertsRequest{})
					return err
				})
			}
			if got := b.State() == BreakerOpen; got != tt.trips {
				t.Errorf("breaker state %v, want open = %v", b.State(), tt.trips)
			}
		})
	}
}
