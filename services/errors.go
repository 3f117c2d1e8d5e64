package services

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/errdefs"
)

// Sentinels of the mesh plumbing; wrap them with the operation (fmt.Errorf("…: %w", err)). The
// sentinels every layer shares (invalid argument, overloaded, unknown session, session exists)
// are errdefs'.
var (
	// ErrNoReplica: every replica of a pool (an expert group, the attnd instances) is gone or
	// behind an open breaker.
	ErrNoReplica = errors.New("services: no healthy replica")
	// ErrBreakerOpen: the instance's circuit breaker rejects calls for now.
	ErrBreakerOpen = errors.New("services: circuit breaker open")
)

// Code maps Err, and every error wrapping it, to a gRPC status code.
type Code struct {
	Err  error
	Code codes.Code
}

// CodeTable is the error → status table of one service edge: a static list each service
// declares beside its handlers and hands to its Server (ServerConfig.Codes). Entries are matched
// with errors.Is in order, so a more specific error listed first wins; after them come the shared
// entries (errdefs' sentinels, ErrNoReplica, ErrBreakerOpen, ErrBadConfig), the same on every edge.
type CodeTable []Code

// sharedCodes ends every CodeTable.
var sharedCodes = CodeTable{
	{errdefs.ErrInvalidArgument, codes.InvalidArgument},
	{errdefs.ErrOverloaded, codes.ResourceExhausted},
	{errdefs.ErrUnknownSession, codes.NotFound},
	{errdefs.ErrSessionExists, codes.AlreadyExists},
	{ErrNoReplica, codes.Unavailable},
	{ErrBreakerOpen, codes.Unavailable},
	{ErrBadConfig, codes.InvalidArgument},
}

// Code is the gRPC status code of err: OK for nil; the code of a status error (also wrapped);
// Canceled and DeadlineExceeded for the context errors, whatever else err wraps; the code of the
// first entry of t, then of the shared entries, that errors.Is matches; Unknown otherwise.
func (t CodeTable) Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	for _, tab := range []CodeTable{t, sharedCodes} {
		for _, e := range tab {
			if errors.Is(err, e.Err) {
				return e.Code
			}
		}
	}
	return codes.Unknown
}

// Status converts err into a gRPC status error with t.Code(err) and err's message. nil stays
// nil, and an error that already carries a status keeps its code.
func (t CodeTable) Status(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	if s, ok := status.FromError(err); ok {
		// A wrapped status error: keep its code, with the wrapping message.
		return s.Err()
	}
	return status.Error(t.Code(err), err.Error())
}

// UnaryServerInterceptor applies t.Status to the errors of unary handlers.
func (t CodeTable) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		return resp, t.Status(err)
	}
}

// StreamServerInterceptor applies t.Status to the errors of streaming handlers.
func (t CodeTable) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return t.Status(handler(srv, ss))
	}
}

// CodeOf is the status code of err under the shared entries only: what a client (a breaker, a
// retry) makes of an error it received or produced itself.
func CodeOf(err error) codes.Code { return CodeTable(nil).Code(err) }
