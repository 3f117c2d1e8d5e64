package services

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestLogHandler(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	sc := span.SpanContext()

	t.Run("json with trace ids", func(t *testing.T) {
		var buf bytes.Buffer
		h, err := NewLogHandler(&buf, LogJSON, slog.LevelInfo)
		if err != nil {
			t.Fatal(err)
		}
		log := slog.New(h).With("service", "gateway")
		log.DebugContext(ctx, "hidden")
		log.InfoContext(ctx, "request", "id", "r1", "tokens", 7)
		log.Info("no span")
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("%d lines, want 2 (debug is below info):\n%s", len(lines), buf.String())
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
			t.Fatalf("not JSON: %v: %s", err, lines[0])
		}
		for k, want := range map[string]any{"level": "INFO", "msg": "request", "service": "gateway", "id": "r1", "tokens": 7.0,
			"trace_id": sc.TraceID().String(), "span_id": sc.SpanID().String()} {
			if rec[k] != want {
				t.Errorf("%s = %v, want %v", k, rec[k], want)
			}
		}
		var plain map[string]any
		if err := json.Unmarshal([]byte(lines[1]), &plain); err != nil {
			t.Fatal(err)
		}
		if _, ok := plain["trace_id"]; ok {
			t.Errorf("a record without a span has a trace_id: %s", lines[1])
		}
	})
	t.Run("text at warn", func(t *testing.T) {
		var buf bytes.Buffer
		h, err := NewLogHandler(&buf, LogText, slog.LevelWarn)
		if err != nil {
			t.Fatal(err)
		}
		log := slog.New(h)
		log.InfoContext(ctx, "hidden")
		log.WithGroup("g").WarnContext(ctx, "breaker open", "instance", "e0")
		out := buf.String()
		if strings.Contains(out, "hidden") || !strings.Contains(out, "level=WARN") || !strings.Contains(out, `msg="breaker open"`) ||
			!strings.Contains(out, "g.instance=e0") || !strings.Contains(out, "trace_id="+sc.TraceID().String()) {
			t.Errorf("text log:\n%s", out)
		}
	})
	t.Run("bad flags", func(t *testing.T) {
		if _, err := NewLogHandler(&bytes.Buffer{}, "xml", slog.LevelInfo); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "log format") {
			t.Errorf("format xml: %v", err)
		}
		for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "INFO": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
			if got, err := ParseLogLevel(in); err != nil || got != want {
				t.Errorf("ParseLogLevel(%q) = %v, %v; want %v", in, got, err, want)
			}
		}
		if _, err := ParseLogLevel("loud"); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "log level") {
			t.Errorf("level loud: %v", err)
		}
	})
}

// TestBreakerLogs: a breaker opening logs a WARN line naming the instance, its half-open probe
// and closing INFO lines.
func TestBreakerLogs(t *testing.T) {
	var buf syncWriter
	h, err := NewLogHandler(&buf, LogJSON, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	prev := slog.Default()
	slog.SetDefault(slog.New(h))
	t.Cleanup(func() { slog.SetDefault(prev) })
	b := NewBreaker("expertd/0-7/e0", BreakerConfig{Failures: 1, OpenTimeout: 20 * time.Millisecond, HalfOpenCalls: 1})
	_ = b.Do(context.Background(), func(context.Context) error { return status.Error(codes.Unavailable, "down") })
	time.Sleep(40 * time.Millisecond)
	if err := b.Do(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		if r["instance"] != "expertd/0-7/e0" {
			t.Errorf("breaker line without the instance: %s", l)
		}
		got = append(got, r["level"].(string)+" "+r["msg"].(string))
	}
	want := []string{"WARN breaker open", "INFO breaker half-open", "INFO breaker closed"}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Errorf("breaker logged %q, want %q", got, want)
	}
}

type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
