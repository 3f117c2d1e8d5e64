package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/mesh"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// TestRequestLog: with --log-format json and tracing on, a generation through the embedded mesh
// logs one "request" line with the request's id, token counts, forwards, steps, time, finish
// reason, degradation and attnd, under the trace id of its gateway.generate span; a refused
// request logs one "request failed" line with its code and cause.
func TestRequestLog(t *testing.T) {
	var buf syncBuffer
	h, err := services.NewLogHandler(&buf, services.LogJSON, slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	prev := slog.Default()
	slog.SetDefault(slog.New(h))
	t.Cleanup(func() { slog.SetDefault(prev) })
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	d, err := resolveModelDir("")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := mesh.Up(ctx, mesh.Config{ModelDir: d, Listen: "127.0.0.1:0", TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	final, err := c.Generate(ctx, &pb.GenerateRequest{RequestId: "logged", Input: &pb.GenerateRequest_Prompt{Prompt: "func main() {"},
		Params: &pb.DecodeParams{Mode: "s", GenLength: 8, BlockLength: 8}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Generate(ctx, &pb.GenerateRequest{RequestId: "refused", Input: &pb.GenerateRequest_Prompt{Prompt: "x"},
		Params: &pb.DecodeParams{Mode: "s", GenLength: 8, BlockLength: 8, Temperature: -1}}, nil); err == nil {
		t.Fatal("temperature -1 accepted")
	}

	var traceID string
	for _, s := range rec.Ended() {
		for _, a := range s.Attributes() {
			if s.Name() == "gateway.generate" && a.Key == "request_id" && a.Value.AsString() == "logged" {
				traceID = s.SpanContext().TraceID().String()
			}
		}
	}
	if traceID == "" {
		t.Fatal("no gateway.generate span for the request")
	}
	lines := map[string][]map[string]any{} // by id
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, l)
		}
		if id, ok := r["id"].(string); ok {
			lines[id] = append(lines[id], r)
		}
	}
	ok := lines["logged"]
	if len(ok) != 1 {
		t.Fatalf("%d log lines for the request, want 1:\n%s", len(ok), buf.String())
	}
	u := final.GetUsage()
	for k, want := range map[string]any{"msg": "request", "level": "INFO", "prompt_tokens": float64(u.GetPromptTokens()),
		"generated_tokens": float64(u.GetGeneratedTokens()), "forwards": float64(u.GetForwards()), "steps": float64(u.GetSteps()),
		"finish_reason": final.GetFinishReason(), "degraded": false, "attnd": m.Attnd.Instance().ID, "trace_id": traceID} {
		if ok[0][k] != want {
			t.Errorf("request line %s = %v, want %v", k, ok[0][k], want)
		}
	}
	if ms, _ := ok[0]["ms"].(float64); ms <= 0 {
		t.Errorf("request line ms = %v", ok[0]["ms"])
	}
	bad := lines["refused"]
	if len(bad) != 1 || bad[0]["msg"] != "request failed" || bad[0]["level"] != "WARN" || bad[0]["code"] != "InvalidArgument" ||
		!strings.Contains(bad[0]["err"].(string), "temperature") {
		t.Errorf("refused request lines: %v, want one WARN request failed, code InvalidArgument, naming temperature", bad)
	}
}

// TestHeldWriter: writes between Hold and release come out at release, in order, after what the
// live view wrote meanwhile.
func TestHeldWriter(t *testing.T) {
	var out syncBuffer
	h := &heldWriter{w: &out}
	_, _ = h.Write([]byte("a\n"))
	release := h.Hold()
	_, _ = h.Write([]byte("b\n"))
	_, _ = h.Write([]byte("c\n"))
	_, _ = out.Write([]byte("view\n"))
	release()
	_, _ = h.Write([]byte("d\n"))
	if got := out.String(); got != "a\nview\nb\nc\nd\n" {
		t.Errorf("got %q", got)
	}
}
