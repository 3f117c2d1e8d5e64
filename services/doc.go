// Package services is the shared gRPC plumbing of the dlmesh mesh: server and client builders
// (keepalive, message sizes, OpenTelemetry stats handlers, health, graceful stop), the error →
// status tables of the service edges (CodeTable: each service declares its own static table,
// passed in ServerConfig.Codes, ahead of the shared entries for errdefs' sentinels),
// per-instance circuit breakers, service discovery (the Registry interface with its in-process
// implementation) and the least-outstanding replica Pool.
//
// It is imported by the service packages (gateway, attnd, expertd) and by cmd/dlmesh. It may import
// proto, tracing and errdefs, never a service package; nothing here is specific to one service.
package services
