// Package errdefs holds the error sentinels that several layers of the mesh share, one per
// concept, so that the engine, the model, the services and their gRPC edges agree on what an
// error means. Each layer wraps them with its operation and the offending field
// (fmt.Errorf("engine: prompt is empty: %w", errdefs.ErrInvalidArgument)); each service edge maps
// them to gRPC status codes in its services.CodeTable.
//
// Who may import: everyone (diffusion, model, engine, services, the service packages, cmd). It
// imports only the standard library.
package errdefs

import "errors"

var (
	// ErrInvalidArgument: a request field is out of range; the wrapping message names the field
	// and the allowed range. gRPC: InvalidArgument.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrOverloaded: a bounded queue or admission limit is full; the client may retry later.
	// gRPC: ResourceExhausted.
	ErrOverloaded = errors.New("overloaded")
	// ErrUnknownSession: a call names a session that was never opened or is already closed.
	// gRPC: NotFound.
	ErrUnknownSession = errors.New("unknown session")
	// ErrSessionExists: Open names a session that is already open. gRPC: AlreadyExists.
	ErrSessionExists = errors.New("session already open")
)
