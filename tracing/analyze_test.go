package tracing

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestBreakdownSelfTimeWithOverlappingChildren(t *testing.T) {
	t0 := time.Unix(100, 0)
	ms := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	spans := []Span{
		{Name: "attnd.step", SpanID: "r", Start: t0, DurationMs: 10},
		// two parallel expert calls over [2,6] and [3,8]: union 6 ms
		{Name: "attnd.experts", SpanID: "a", ParentSpanID: "r", Start: t0.Add(ms(2)), DurationMs: 4},
		{Name: "attnd.experts", SpanID: "b", ParentSpanID: "r", Start: t0.Add(ms(3)), DurationMs: 5},
		{Name: "other", SpanID: "x", Start: t0, DurationMs: 1},
	}
	b := Breakdown(spans, "attnd.step")
	if b.Steps != 1 || b.TotalMs != 10 {
		t.Fatalf("steps %d total %.1f", b.Steps, b.TotalMs)
	}
	if len(b.Parts) != 1 || b.Parts[0].Count != 2 || b.Parts[0].TotalMs != 9 {
		t.Fatalf("parts %+v", b.Parts)
	}
	if d := b.SelfMs - 4; d > 1e-9 || d < -1e-9 {
		t.Fatalf("self %.3f ms, want 4", b.SelfMs)
	}
	var buf bytes.Buffer
	if err := WriteReport(&buf, spans); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "where attnd.step time went") {
		t.Fatalf("report:\n%s", buf.String())
	}
	s := Summarize(spans)
	if s[0].Name != "attnd.step" || s[0].Count != 1 {
		t.Fatalf("summary %+v", s)
	}
}
