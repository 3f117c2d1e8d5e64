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

// TestStepCosts: an engine step over [0,20] ms whose attnd step [2,18] waits on two overlapping
// fan-outs [4,8] and [6,10] splits into 6 ms of experts, 10 of attention and 4 of network; an
// attnd step traced alone has no network part; an engine step without its attnd step is
// untraced. The text report prints the same totals.
func TestStepCosts(t *testing.T) {
	t0 := time.Unix(100, 0)
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }
	spans := []Span{
		{Name: "engine.step", SpanID: "e1", Start: at(0), DurationMs: 20},
		{Name: "dlmesh.v1.Attention/Step", SpanID: "c1", ParentSpanID: "e1", Kind: "client", Start: at(1), DurationMs: 18},
		{Name: "attnd.step", SpanID: "a1", ParentSpanID: "c1", Start: at(2), DurationMs: 16},
		{Name: "attnd.experts", SpanID: "x1", ParentSpanID: "a1", Start: at(4), DurationMs: 4},
		{Name: "attnd.experts", SpanID: "x2", ParentSpanID: "a1", Start: at(6), DurationMs: 4},
		{Name: "attnd.step", SpanID: "a2", ParentSpanID: "remote", Start: at(30), DurationMs: 5},
		{Name: "attnd.experts", SpanID: "x3", ParentSpanID: "a2", Start: at(31), DurationMs: 2},
		{Name: "engine.step", SpanID: "e2", Start: at(40), DurationMs: 7},
	}
	got := StepCosts(spans)
	want := []StepCost{
		{Step: spans[0], ExpertsMs: 6, AttnMs: 10, NetworkMs: 4},
		{Step: spans[5], ExpertsMs: 2, AttnMs: 3},
		{Step: spans[7], UntracedMs: 7},
	}
	if len(got) != len(want) {
		t.Fatalf("%d steps, want %d", len(got), len(want))
	}
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	for k := range want {
		g, w := got[k], want[k]
		if g.Step.SpanID != w.Step.SpanID || !near(g.ExpertsMs, w.ExpertsMs) || !near(g.AttnMs, w.AttnMs) ||
			!near(g.NetworkMs, w.NetworkMs) || !near(g.UntracedMs, w.UntracedMs) {
			t.Errorf("step %d: got %s %+v, want %s %+v", k, g.Step.SpanID, costOnly(g), w.Step.SpanID, costOnly(w))
		}
	}
	var buf bytes.Buffer
	if err := WriteReport(&buf, spans); err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(buf.String()), " ")
	for _, line := range []string{"where each step's time went (3 steps, 32.0 ms", "expert fan-out 8.0 2.67 25%",
		"attention / LM head (attnd) 13.0", "network / queue 4.0", "attnd not traced here 7.0"} {
		if !strings.Contains(text, line) {
			t.Errorf("report lacks %q:\n%s", line, buf.String())
		}
	}
}

func costOnly(c StepCost) [4]float64 {
	return [4]float64{c.ExpertsMs, c.AttnMs, c.NetworkMs, c.UntracedMs}
}
