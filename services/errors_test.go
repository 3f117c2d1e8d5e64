package services

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/errdefs"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

var errTestSentinel = errors.New("test: weights not resident")

// testCodes is a service's own table, as the service packages declare theirs.
var testCodes = CodeTable{
	{errTestSentinel, codes.FailedPrecondition},
	// A service may override a shared entry: its own entries come first.
	{errTestOverride, codes.Internal},
}

var errTestOverride = fmt.Errorf("test: corrupt session: %w", errdefs.ErrUnknownSession)

func TestCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"nil", nil, codes.OK},
		{"no replica", ErrNoReplica, codes.Unavailable},
		{"overloaded", errdefs.ErrOverloaded, codes.ResourceExhausted},
		{"unknown session", errdefs.ErrUnknownSession, codes.NotFound},
		{"invalid argument", errdefs.ErrInvalidArgument, codes.InvalidArgument},
		{"breaker open", ErrBreakerOpen, codes.Unavailable},
		{"bad config", ErrBadConfig, codes.InvalidArgument},
		{"wrapped no replica", fmt.Errorf("attnd: layer 3 group 1: %w", ErrNoReplica), codes.Unavailable},
		{"twice wrapped overloaded", fmt.Errorf("a: %w", fmt.Errorf("b: %w", errdefs.ErrOverloaded)), codes.ResourceExhausted},
		{"joined", errors.Join(errors.New("other"), errdefs.ErrUnknownSession), codes.NotFound},
		{"canceled", context.Canceled, codes.Canceled},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded},
		{"wrapped canceled", fmt.Errorf("gateway: step: %w", context.Canceled), codes.Canceled},
		{"wrapped deadline", fmt.Errorf("attnd: experts: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"canceled wins over sentinel", errors.Join(errdefs.ErrOverloaded, context.Canceled), codes.Canceled},
		{"session exists", fmt.Errorf("engine: open %q: %w", "a", errdefs.ErrSessionExists), codes.AlreadyExists},
		{"service entry", errTestSentinel, codes.FailedPrecondition},
		{"service entry wrapped", fmt.Errorf("expertd: compute: %w", errTestSentinel), codes.FailedPrecondition},
		{"service entry before shared", fmt.Errorf("x: %w", errTestOverride), codes.Internal},
		{"status", status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
		{"wrapped status", fmt.Errorf("call: %w", status.Error(codes.Aborted, "x")), codes.Aborted},
		{"unregistered", errors.New("boom"), codes.Unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := testCodes.Code(tt.err); got != tt.want {
				t.Errorf("Code(%v) = %v, want %v", tt.err, got, tt.want)
			}
			st := testCodes.Status(tt.err)
			if tt.err == nil {
				if st != nil {
					t.Errorf("Status(nil) = %v", st)
				}
				return
			}
			s, ok := status.FromError(st)
			if !ok {
				t.Fatalf("Status(%v) = %v is not a status error", tt.err, st)
			}
			if s.Code() != tt.want {
				t.Errorf("Status code %v, want %v", s.Code(), tt.want)
			}
			if s.Message() != tt.err.Error() && status.Code(tt.err) == codes.Unknown {
				t.Errorf("message %q, want %q", s.Message(), tt.err.Error())
			}
		})
	}
}

func TestStatusPassesStatusThrough(t *testing.T) {
	err := status.Error(codes.OutOfRange, "gen_length 9000 not in [1, 4096]")
	if got := testCodes.Status(err); got != err {
		t.Errorf("Status changed a status error: %v", got)
	}
}

// Each edge has its own table: a service's entry does not leak into another's, nor into CodeOf.
func TestTablesAreSeparate(t *testing.T) {
	if got := (CodeTable{}).Code(errTestSentinel); got != codes.Unknown {
		t.Errorf("another edge maps the test sentinel to %v, want Unknown", got)
	}
	if got := CodeOf(errTestSentinel); got != codes.Unknown {
		t.Errorf("CodeOf maps the test sentinel to %v, want Unknown", got)
	}
	if got := CodeOf(fmt.Errorf("x: %w", errdefs.ErrOverloaded)); got != codes.ResourceExhausted {
		t.Errorf("CodeOf(overloaded) = %v, want ResourceExhausted", got)
	}
}

// The interceptors map handler errors on the wire.
func TestInterceptorsOverTheWire(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"sentinel", fmt.Errorf("expertd: admit: %w", errdefs.ErrOverloaded), codes.ResourceExhausted},
		{"invalid", fmt.Errorf("expertd: rows 0 not in [1, 65536]: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{"canceled", fmt.Errorf("expertd: %w", context.Canceled), codes.Canceled},
		{"service entry", fmt.Errorf("expertd: %w", errTestSentinel), codes.FailedPrecondition},
		{"status", status.Error(codes.FailedPrecondition, "fingerprint mismatch"), codes.FailedPrecondition},
		{"plain", errors.New("boom"), codes.Unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, ServerConfig{Codes: testCodes}, func(s *Server) {
				pb.RegisterExpertsServer(s, &fakeExperts{err: tt.err})
			})
			client := pb.NewExpertsClient(ts.dial(t, ClientConfig{}))
			_, err := client.Compute(t.Context(), &pb.ExpertsRequest{})
			if got := status.Code(err); got != tt.want {
				t.Errorf("code %v (%v), want %v", got, err, tt.want)
			}
			if s, _ := status.FromError(err); s.Message() != status.Convert(tt.err).Message() {
				t.Errorf("message %q, want %q", s.Message(), tt.err.Error())
			}
		})
	}
}
