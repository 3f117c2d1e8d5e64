// Package services is the shared gRPC plumbing of the dlmesh mesh: the Node that owns a
// service's life (listen, health, load, registration, graceful stop on SIGINT/SIGTERM), server
// and client builders (keepalive, message sizes, OpenTelemetry stats handlers, health,
// reflection, transport credentials), the error → status tables of the service edges
// (CodeTable: each service declares its own static table, handed to its Node, ahead of the
// shared entries for errdefs' sentinels), per-instance circuit breakers, service discovery (the
// Registry interface with its in-process implementation) and the least-outstanding replica Pool.
//
// Who may import: the service packages (gateway, attnd, expertd), mesh, cmd/dlmesh, tests. It
// imports proto, errdefs and kernels (for the device a service reports), never a service
// package; nothing here is specific to one service.
package services
