// Package tracing sets up OpenTelemetry for the dlmesh services (an OTLP gRPC exporter, a
// JSON-lines file exporter, the W3C trace-context propagator) and reads the JSON-lines spans back
// for the latency analysis: text tables (WriteReport) and one self-contained HTML page with inline
// SVG (WriteHTML: a step timeline, a histogram, where each step's time went, per-request step
// latency; no script, nothing fetched, under MaxHTMLBytes with the default options whatever the
// trace's size). Who may import: cmd/dlmesh, the services wiring, tests. It imports no other dlmesh package.
//
// testdata/mesh.jsonl is a span file of the in-process mesh serving two concurrent requests;
// `go test ./tracing/ -update` regenerates it.
package tracing
