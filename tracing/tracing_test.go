package tracing

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func shutdownNow(tb testing.TB, shutdown func(context.Context) error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		tb.Fatalf("shutdown: %v", err)
	}
}

func TestFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.jsonl")
	shutdown, err := Setup(t.Context(), Config{ServiceName: "attnd", File: path})
	if err != nil {
		t.Fatal(err)
	}
	attrs := []attribute.KeyValue{
		attribute.Bool("ok", true),
		attribute.Int64("rows", 32),
		attribute.Int("big", math.MaxInt64),
		attribute.Float64("ms", 1.5),
		attribute.Float64("whole", 2),
		attribute.Float64("nan", math.NaN()),
		attribute.String("session", "s-1"),
		attribute.BoolSlice("bs", []bool{true, false}),
		attribute.Int64Slice("layers", []int64{1, 2, 3}),
		attribute.Float64Slice("probs", []float64{0.25, 1}),
		attribute.StringSlice("groups", []string{"g0", "g1"}),
	}
	tr := Tracer("dlmesh/attnd")
	ctx, root := tr.Start(t.Context(), "Step", trace.WithSpanKind(trace.SpanKindServer))
	_, child := tr.Start(ctx, "experts.layer", trace.WithAttributes(attrs...))
	child.AddEvent("sent", trace.WithAttributes(attribute.Int("bytes", 4096)))
	time.Sleep(2 * time.Millisecond)
	child.SetStatus(codes.Error, "group 1 unavailable")
	child.End()
	root.End()
	shutdownNow(t, shutdown)

	spans, err := ReadSpans(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	c, r := spans[0], spans[1] // children end first
	if c.Name != "experts.layer" || r.Name != "Step" {
		t.Fatalf("names %q, %q", c.Name, r.Name)
	}
	if c.TraceID != root.SpanContext().TraceID().String() || c.TraceID != r.TraceID {
		t.Errorf("trace ids %s, %s", c.TraceID, r.TraceID)
	}
	if c.SpanID != child.SpanContext().SpanID().String() || c.ParentSpanID != r.SpanID || r.ParentSpanID != "" {
		t.Errorf("span/parent ids: child %s parent %s, root %s parent %q", c.SpanID, c.ParentSpanID, r.SpanID, r.ParentSpanID)
	}
	if c.Service != "attnd" || c.Scope != "dlmesh/attnd" || r.Kind != "server" || c.Kind != "internal" {
		t.Errorf("service %q scope %q kinds %q %q", c.Service, c.Scope, r.Kind, c.Kind)
	}
	if c.Status != (Status{Code: "Error", Message: "group 1 unavailable"}) || r.Status.Code != "Unset" {
		t.Errorf("status %+v, %+v", c.Status, r.Status)
	}
	if c.DurationMs < 2 || !c.End.After(c.Start) || math.Abs(c.DurationMs-float64(c.End.Sub(c.Start).Nanoseconds())/1e6) > 1e-6 {
		t.Errorf("duration %v ms, start %v end %v", c.DurationMs, c.Start, c.End)
	}
	want := Attributes{
		"ok": true, "rows": int64(32), "big": int64(math.MaxInt64), "ms": 1.5, "whole": 2.0, "nan": "NaN",
		"session": "s-1", "bs": []bool{true, false}, "layers": []int64{1, 2, 3},
		"probs": []float64{0.25, 1}, "groups": []string{"g0", "g1"},
	}
	if !reflect.DeepEqual(c.Attributes, want) {
		t.Errorf("attributes\n got %#v\nwant %#v", c.Attributes, want)
	}
	if len(c.Events) != 1 || c.Events[0].Name != "sent" || c.Events[0].Attributes["bytes"] != int64(4096) {
		t.Errorf("events %+v", c.Events)
	}
}

// Two services in one process share a file; spans from many goroutines land on whole lines.
func TestFileSharedConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.jsonl")
	const goroutines, per = 8, 200
	var providers []trace.TracerProvider
	for _, name := range []string{"gateway", "expertd"} {
		tp, shutdown, err := NewProvider(t.Context(), Config{ServiceName: name, File: path})
		if err != nil {
			t.Fatal(err)
		}
		defer shutdownNow(t, shutdown)
		providers = append(providers, tp)
	}
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr := providers[g%2].Tracer("test")
			for i := range per {
				_, s := tr.Start(context.Background(), fmt.Sprintf("span-%d-%d", g, i),
					trace.WithAttributes(attribute.String("pad", strings.Repeat("x", 200))))
				s.End()
			}
		}()
	}
	wg.Wait()
	for _, tp := range providers {
		if err := tp.(interface{ ForceFlush(context.Context) error }).ForceFlush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	spans, err := ReadSpans(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != goroutines*per {
		t.Fatalf("%d spans, want %d", len(spans), goroutines*per)
	}
	services := map[string]int{}
	for _, s := range spans {
		services[s.Service]++
	}
	if services["gateway"] != goroutines*per/2 || services["expertd"] != goroutines*per/2 {
		t.Errorf("spans per service %v", services)
	}
}

func TestReadSpansTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.jsonl")
	good := `{"name":"a","trace_id":"01","span_id":"02","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z","duration_ms":1000,"status":{"code":"Unset"},"service":"x"}`
	for _, tt := range []struct {
		name    string
		content string
		spans   int
		wantErr bool
	}{
		{"torn last line", good + "\n" + `{"name":"b","tra`, 1, false},
		{"blank lines", "\n" + good + "\n\n" + good + "\n", 2, false},
		{"bad middle line", good + "\n{oops}\n" + good + "\n", 0, true},
		{"empty", "", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			spans, err := ReadSpans(path)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "line 2") {
					t.Errorf("ReadSpans = %v, want an error naming line 2", err)
				}
				return
			}
			if err != nil || len(spans) != tt.spans {
				t.Errorf("ReadSpans = %d spans, %v; want %d", len(spans), err, tt.spans)
			}
		})
	}
	if _, err := ReadSpans(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestSetupNoop(t *testing.T) {
	shutdown, err := Setup(t.Context(), Config{ServiceName: "gateway"})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdownNow(t, shutdown)
	_, s := Tracer("x").Start(t.Context(), "span")
	if s.IsRecording() {
		t.Error("no exporter configured, yet the span records")
	}
	s.End()

	// The W3C propagator is installed even with tracing off.
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	ctx := trace.ContextWithSpanContext(t.Context(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, carrier)
	if got := carrier.Get("traceparent"); got != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Errorf("traceparent %q", got)
	}
}

func TestSetupOTLP(t *testing.T) {
	// No collector listens there: setup must not block, and shutdown with nothing to export is clean.
	shutdown, err := Setup(t.Context(), Config{ServiceName: "expertd", OTLPEndpoint: "127.0.0.1:1", SampleRatio: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	shutdownNow(t, shutdown)
}

func TestConfigValidate(t *testing.T) {
	for _, r := range []float64{-0.1, 1.5} {
		if _, err := Setup(t.Context(), Config{File: "x", SampleRatio: r}); !errors.Is(err, ErrBadConfig) {
			t.Errorf("sample ratio %v: %v, want ErrBadConfig", r, err)
		}
	}
}

func TestExporterAfterShutdown(t *testing.T) {
	e, err := NewFileExporter(filepath.Join(t.TempDir(), "t.jsonl"), "x")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := e.Shutdown(t.Context()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := e.ExportSpans(t.Context(), nil); !errors.Is(err, ErrExporterShutdown) {
		t.Errorf("ExportSpans after Shutdown: %v", err)
	}
}
