package mesh_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dlmesh/dlmesh/mesh"
)

// TestMeshSpans: one short request leaves the generate, block, step, attnd step, expert fan-out
// and expertd compute spans, with their attributes.
func TestMeshSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	m := upMesh(t, mesh.Config{TracerProvider: tp})
	c := dialGateway(t, m)
	if _, err := generate(context.Background(), c, shortRequest("s", 8, 4, "spans")); err != nil {
		t.Fatal(err)
	}
	want := map[string][]attribute.Key{
		"gateway.generate": {"request_id"},
		"gateway.block":    {"block"},
		"gateway.step":     {"block", "masked_before", "unmasked", "edited"},
		"engine.step":      {"requests", "block_length"}, // through mesh.Config.TracerProvider too
		"attnd.step":       {"sessions"},
		"attnd.microbatch": {"index", "sessions", "rows"},
		"attnd.experts":    {"layer", "groups", "rows"},
		"expertd.compute":  {"layer", "rows"},
	}
	seen := map[string]bool{}
	for _, s := range exp.GetSpans() {
		keys, ok := want[s.Name]
		if !ok || seen[s.Name] {
			continue
		}
		seen[s.Name] = true
		have := map[attribute.Key]bool{}
		for _, a := range s.Attributes {
			have[a.Key] = true
		}
		for _, k := range keys {
			if !have[k] {
				t.Errorf("span %s lacks attribute %s", s.Name, k)
			}
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("no %s span", name)
		}
	}
}
