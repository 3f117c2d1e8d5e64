package services

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

var errTestSentinel = errors.New("test: weights not resident")

func init() {
	RegisterCode(errTestSentinel, codes.FailedPrecondition)
}

func TestCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"nil", nil, codes.OK},
		{"no replica", ErrNoReplica, codes.Unavailable},
		{"overloaded", ErrOverloaded, codes.ResourceExhausted},
		{"unknown session", ErrUnknownSession, codes.NotFound},
		{"invalid argument", ErrInvalidArgument, codes.InvalidArgument},
		{"breaker open", ErrBreakerOpen, codes.Unavailable},
		{"bad config", ErrBadConfig, codes.InvalidArgument},
		{"wrapped no replica", fmt.Errorf("attnd: layer 3 group 1: %w", ErrNoReplica), codes.Unavailable},
		{"twice wrapped overloaded", fmt.Errorf("a: %w", fmt.Errorf("b: %w", ErrOverloaded)), codes.ResourceExhausted},
		{"joined", errors.Join(errors.New("other"), ErrUnknownSession), codes.NotFound},
		{"canceled", context.Canceled, codes.Canceled},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded},
		{"wrapped canceled", fmt.Errorf("gateway: step: %w", context.Canceled), codes.Canceled},
		{"wrapped deadline", fmt.Errorf("attnd: experts: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"canceled wins over sentinel", errors.Join(ErrOverloaded, context.Canceled), codes.Canceled},
		{"registered elsewhere", errTestSentinel, codes.FailedPrecondition},
		{"registered elsewhere wrapped", fmt.Errorf("expertd: compute: %w", errTestSentinel), codes.FailedPrecondition},
		{"status", status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
		{"wrapped status", fmt.Errorf("call: %w", status.Error(codes.Aborted, "x")), codes.Aborted},
		{"unregistered", errors.New("boom"), codes.Unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Code(tt.err); got != tt.want {
				t.Errorf("Code(%v) = %v, want %v", tt.err, got, tt.want)
			}
			st := ToStatus(tt.err)
			if tt.err == nil {
				if st != nil {
					t.Errorf("ToStatus(nil) = %v", st)
				}
				return
			}
			s, ok := status.FromError(st)
			if !ok {
				t.Fatalf("ToStatus(%v) = %v is not a status error", tt.err, st)
			}
			if s.Code() != tt.want {
				t.Errorf("ToStatus code %v, want %v", s.Code(), tt.want)
			}
			if s.Message() != tt.err.Error() && status.Code(tt.err) == codes.Unknown {
				t.Errorf("message %q, want %q", s.Message(), tt.err.Error())
			}
		})
	}
}

func TestToStatusPassesStatusThrough(t *testing.T) {
	err := status.Error(codes.OutOfRange, "gen_length 9000 not in [1, 4096]")
	if got := ToStatus(err); got != err {
		t.Errorf("ToStatus changed a status error: %v", got)
	}
}

func TestRegisterCodeReplaces(t *testing.T) {
	errLocal := errors.New("test: replaced")
	RegisterCode(errLocal, codes.Internal)
	RegisterCode(errLocal, codes.Unavailable)
	if got := Code(errLocal); got != codes.Unavailable {
		t.Errorf("Code = %v after re-registration, want Unavailable", got)
	}
}

func TestRegisterCodeRefusesOK(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("RegisterCode(err, OK) did not panic")
		}
	}()
	RegisterCode(errors.New("test: ok"), codes.OK)
}

// The interceptors map handler errors on the wire.
func TestInterceptorsOverTheWire(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"sentinel", fmt.Errorf("expertd: admit: %w", ErrOverloaded), codes.ResourceExhausted},
		{"invalid", fmt.Errorf("expertd: rows 0 not in [1, 65536]: %w", ErrInvalidArgument), codes.InvalidArgument},
		{"canceled", fmt.Errorf("expertd: %w", context.Canceled), codes.Canceled},
		{"status", status.Error(codes.FailedPrecondition, "fingerprint mismatch"), codes.FailedPrecondition},
		{"plain", errors.New("boom"), codes.Unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, ServerConfig{}, func(s *Server) {
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
