package services

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinels of the mesh plumbing; wrap them with the operation (fmt.Errorf("…: %w", err)).
var (
	// ErrNoReplica: every replica of a pool (an expert group, the attnd instances) is gone or
	// behind an open breaker.
	ErrNoReplica = errors.New("services: no healthy replica")
	// ErrOverloaded: a bounded queue or admission limit is full; the client may retry later.
	ErrOverloaded = errors.New("services: overloaded")
	// ErrUnknownSession: a call names a session that was never opened or is already closed.
	ErrUnknownSession = errors.New("services: unknown session")
	// ErrInvalidArgument: a request field is out of range; the wrapping message names the field
	// and the allowed range.
	ErrInvalidArgument = errors.New("services: invalid argument")
	// ErrBreakerOpen: the instance's circuit breaker rejects calls for now.
	ErrBreakerOpen = errors.New("services: circuit breaker open")
)

// codeTable is the one table from errors to gRPC status codes. Other packages add their
// sentinels with RegisterCode (from an init function or before serving); entries are matched
// with errors.Is in registration order, so a more specific error registered first wins.
var codeTable = struct {
	sync.RWMutex
	entries []codeEntry
}{entries: []codeEntry{
	{ErrInvalidArgument, codes.InvalidArgument},
	{ErrBadConfig, codes.InvalidArgument},
	{ErrUnknownSession, codes.NotFound},
	{ErrOverloaded, codes.ResourceExhausted},
	{ErrNoReplica, codes.Unavailable},
	{ErrBreakerOpen, codes.Unavailable},
}}

type codeEntry struct {
	err  error
	code codes.Code
}

// RegisterCode maps err (and every error wrapping it) to code. Registering the same error again
// replaces its code. Registering codes.OK is refused: an error is never a success.
func RegisterCode(err error, code codes.Code) {
	if err == nil || code == codes.OK {
		panic("services: RegisterCode needs a non-nil error and a non-OK code")
	}
	codeTable.Lock()
	defer codeTable.Unlock()
	for i, e := range codeTable.entries {
		if e.err == err {
			codeTable.entries[i].code = code
			return
		}
	}
	codeTable.entries = append(codeTable.entries, codeEntry{err, code})
}

// Code is the gRPC status code of err: OK for nil; the code of a status error (also wrapped);
// Canceled and DeadlineExceeded for the context errors; the registered code of the first
// registered error that errors.Is matches; Unknown otherwise.
func Code(err error) codes.Code {
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
	codeTable.RLock()
	defer codeTable.RUnlock()
	for _, e := range codeTable.entries {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	return codes.Unknown
}

// ToStatus converts err into a gRPC status error with Code(err) and err's message. nil stays
// nil, and an error that already carries a status keeps its code.
func ToStatus(err error) error {
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
	return status.Error(Code(err), err.Error())
}

// UnaryServerInterceptor applies ToStatus to the errors of unary handlers.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		return resp, ToStatus(err)
	}
}

// StreamServerInterceptor applies ToStatus to the errors of streaming handlers.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return ToStatus(handler(srv, ss))
	}
}
