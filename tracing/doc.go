// Package tracing sets up OpenTelemetry for the dlmesh services (an OTLP gRPC exporter, a
// JSON-lines file exporter, the W3C trace-context propagator) and reads the JSON-lines spans back
// for the latency analysis. It imports no other dlmesh package; services and cmd/dlmesh import it.
package tracing
