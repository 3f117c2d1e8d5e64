// Package services is the shared gRPC plumbing of the dlmesh mesh: server and client builders
// (keepalive, message sizes, OpenTelemetry stats handlers, health, graceful stop), the one table
// mapping errors to gRPC status codes, per-instance circuit breakers, service discovery (the
// Registry interface with its in-process implementation) and the least-outstanding replica Pool.
//
// It is imported by the service packages (gateway, attnd, expertd) and by cmd/dlmesh. It may import
// proto, tracing and kernels (for the device a service reports), never a service package; nothing here is specific to one service.
package services
