package tracing

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"text/tabwriter"
)

// NameStats summarises the spans of one name.
type NameStats struct {
	Name                                      string
	Count                                     int
	TotalMs, MeanMs, P50Ms, P90Ms, P95Ms, Max float64
}

// Summarize groups spans by name, longest total first.
func Summarize(spans []Span) []NameStats {
	by := map[string][]float64{}
	for _, s := range spans {
		by[s.Name] = append(by[s.Name], s.DurationMs)
	}
	out := make([]NameStats, 0, len(by))
	for name, ds := range by {
		slices.Sort(ds)
		st := NameStats{Name: name, Count: len(ds), Max: ds[len(ds)-1]}
		for _, d := range ds {
			st.TotalMs += d
		}
		st.MeanMs = st.TotalMs / float64(len(ds))
		st.P50Ms = ds[len(ds)/2]
		st.P90Ms = ds[min(len(ds)-1, len(ds)*9/10)]
		st.P95Ms = ds[min(len(ds)-1, len(ds)*95/100)]
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].TotalMs != out[j].TotalMs {
			return out[i].TotalMs > out[j].TotalMs
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// StepBreakdown answers "where did each step's time go?": for every span named root (e.g.
// "engine.step" or "attnd.step"), the time of its direct children by name, summed over all
// steps, and the part of the root no child covers (self time).
type StepBreakdown struct {
	Root    string
	Steps   int
	TotalMs float64
	Parts   []NameStats // children by name; Count is the number of child spans
	SelfMs  float64
}

// Breakdown computes a StepBreakdown for root.
func Breakdown(spans []Span, root string) StepBreakdown {
	return newIndex(spans).breakdown(root)
}

func (ix *index) breakdown(root string) StepBreakdown {
	b := StepBreakdown{Root: root}
	parts := map[string]*NameStats{}
	for i, s := range ix.spans {
		if s.Name != root {
			continue
		}
		b.Steps++
		b.TotalMs += s.DurationMs
		sp := ix.split(i)
		for _, c := range sp.children {
			p := parts[c.Name]
			if p == nil {
				p = &NameStats{Name: c.Name}
				parts[c.Name] = p
			}
			p.Count++
			p.TotalMs += c.DurationMs
			p.Max = max(p.Max, c.DurationMs)
		}
		b.SelfMs += sp.selfMs
	}
	for _, p := range parts {
		p.MeanMs = p.TotalMs / float64(p.Count)
		b.Parts = append(b.Parts, *p)
	}
	sort.Slice(b.Parts, func(i, j int) bool { return b.Parts[i].TotalMs > b.Parts[j].TotalMs })
	return b
}

// split is one span's direct children and how much of the span they cover.
type split struct {
	children []Span
	// byName is, per child name, the union of those children's intervals (ms from the
	// span's start); children may overlap (a parallel fan-out).
	byName map[string][][2]float64
	// selfMs is the span's duration minus the union of all its children's intervals.
	selfMs float64
}

func (ix *index) split(i int) split {
	s := ix.spans[i]
	sp := split{byName: map[string][][2]float64{}}
	var all [][2]float64
	for _, j := range ix.children[s.SpanID] {
		c := ix.spans[j]
		sp.children = append(sp.children, c)
		iv := relMs(s, c)
		sp.byName[c.Name] = append(sp.byName[c.Name], iv)
		all = append(all, iv)
	}
	sp.selfMs = s.DurationMs - union(all)
	return sp
}

func union(iv [][2]float64) float64 {
	if len(iv) == 0 {
		return 0
	}
	iv = slices.Clone(iv)
	sort.Slice(iv, func(i, j int) bool { return iv[i][0] < iv[j][0] })
	total, lo, hi := 0.0, iv[0][0], iv[0][1]
	for _, x := range iv[1:] {
		if x[0] > hi {
			total += hi - lo
			lo, hi = x[0], x[1]
		} else if x[1] > hi {
			hi = x[1]
		}
	}
	return total + hi - lo
}

// Span names the step analysis knows.
const (
	SpanEngineStep      = "engine.step"
	SpanAttndStep       = "attnd.step"
	SpanAttndExperts    = "attnd.experts"
	SpanAttndMicrobatch = "attnd.microbatch"
	SpanGenerate        = "gateway.generate"
	SpanGatewayBlock    = "gateway.block"
	SpanGatewayStep     = "gateway.step"
)

// StepCost splits one step's wall time into what the charts of the report stack. A step is an
// engine.step span, or an attnd.step span with no engine.step above it in the file (attnd
// traced on its own). The four parts sum to Step.DurationMs (up to clock skew between
// processes, which can make NetworkMs slightly negative).
type StepCost struct {
	Step Span
	// ExpertsMs is the time attnd waited on the expert fan-out: the union of the attnd.experts
	// spans below each attnd.step (directly or under its attnd.microbatch spans), summed over the
	// step's attnd.step spans.
	ExpertsMs float64
	// AttnMs is attnd.step time outside the fan-out: embeddings, attention, router, dense
	// layers, LM head (the shared expert runs during the fan-out).
	AttnMs float64
	// NetworkMs is step time outside every attnd.step: the gRPC hop to attnd and back,
	// (de)serialisation and waiting for attnd's lock, plus the engine's own work.
	NetworkMs float64
	// UntracedMs is the step time when no attnd.step below it is in the file (attnd wrote its
	// spans elsewhere); then the other parts are 0.
	UntracedMs float64
}

// StepCosts returns the cost of every step in the file, in start order.
func StepCosts(spans []Span) []StepCost {
	return newIndex(spans).stepCosts()
}

// steps returns the step roots (see StepCost), in start order.
func (ix *index) steps() []int {
	var out []int
	for i, s := range ix.spans {
		if s.Name == SpanEngineStep || (s.Name == SpanAttndStep && ix.ancestor(i, SpanEngineStep) < 0) {
			out = append(out, i)
		}
	}
	sort.SliceStable(out, func(a, b int) bool { return ix.spans[out[a]].Start.Before(ix.spans[out[b]].Start) })
	return out
}

func (ix *index) stepCosts() []StepCost {
	roots := ix.steps()
	out := make([]StepCost, len(roots))
	for k, i := range roots {
		out[k] = ix.stepCost(i)
	}
	return out
}

func (ix *index) stepCost(i int) StepCost {
	root := ix.spans[i]
	c := StepCost{Step: root}
	attnd := []int{i}
	if root.Name != SpanAttndStep {
		attnd = nil
		ix.descendants(i, func(j, _ int) bool {
			if ix.spans[j].Name == SpanAttndStep {
				attnd = append(attnd, j)
				return false
			}
			return true
		})
	}
	if len(attnd) == 0 {
		c.UntracedMs = root.DurationMs
		return c
	}
	var ivs [][2]float64
	for _, a := range attnd {
		as := ix.spans[a]
		var exIvs [][2]float64 // the fan-outs, also those under attnd.microbatch spans
		ix.descendants(a, func(j, _ int) bool {
			if ix.spans[j].Name == SpanAttndExperts {
				exIvs = append(exIvs, relMs(as, ix.spans[j]))
				return false
			}
			return true
		})
		experts := union(exIvs)
		c.ExpertsMs += experts
		c.AttnMs += as.DurationMs - experts
		ivs = append(ivs, relMs(root, as))
	}
	c.NetworkMs = root.DurationMs - union(ivs)
	return c
}

// CostTotals sums StepCosts.
func CostTotals(costs []StepCost) (total StepCost) {
	for _, c := range costs {
		total.Step.DurationMs += c.Step.DurationMs
		total.ExpertsMs += c.ExpertsMs
		total.AttnMs += c.AttnMs
		total.NetworkMs += c.NetworkMs
		total.UntracedMs += c.UntracedMs
	}
	return total
}

// costParts names the parts of a StepCost, in the order the reports stack them.
var costParts = []struct {
	Name, Class string
	get         func(StepCost) float64
}{
	{"expert fan-out", "experts", func(c StepCost) float64 { return c.ExpertsMs }},
	{"attention / LM head (attnd)", "attn", func(c StepCost) float64 { return c.AttnMs }},
	{"network / queue", "network", func(c StepCost) float64 { return c.NetworkMs }},
	{"attnd not traced here", "untraced", func(c StepCost) float64 { return c.UntracedMs }},
}

// WriteReport prints the per-name table, the breakdown of every step-like root present and
// the split of the steps' time into expert fan-out, attention and network.
func WriteReport(w io.Writer, spans []Span) error {
	ix := newIndex(spans)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "span\tcount\ttotal ms\tmean ms\tp50 ms\tp90 ms\tp95 ms\tmax ms\t")
	for _, s := range Summarize(spans) {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", s.Name, s.Count, s.TotalMs, s.MeanMs, s.P50Ms, s.P90Ms, s.P95Ms, s.Max)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, root := range []string{SpanEngineStep, SpanAttndStep, SpanAttndExperts} {
		b := ix.breakdown(root)
		if b.Steps == 0 {
			continue
		}
		fmt.Fprintf(w, "\nwhere %s time went (%d spans, %.1f ms, %.2f ms each):\n", root, b.Steps, b.TotalMs, b.TotalMs/float64(b.Steps))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "child\tcount\ttotal ms\tshare (parallel children can sum past 100%)\t")
		for _, p := range b.Parts {
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.0f%%\t\n", p.Name, p.Count, p.TotalMs, 100*p.TotalMs/b.TotalMs)
		}
		fmt.Fprintf(tw, "(self, not in any child)\t\t%.1f\t%.0f%%\t\n", b.SelfMs, 100*b.SelfMs/b.TotalMs)
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	costs := ix.stepCosts()
	if len(costs) == 0 {
		return nil
	}
	t := CostTotals(costs)
	fmt.Fprintf(w, "\nwhere each step's time went (%d steps, %.1f ms, %.2f ms each):\n", len(costs), t.Step.DurationMs, t.Step.DurationMs/float64(len(costs)))
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "part\ttotal ms\tms per step\tshare\t")
	for _, p := range costParts {
		v := p.get(t)
		if v == 0 && p.Class == "untraced" {
			continue
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.2f\t%.0f%%\t\n", p.Name, v, v/float64(len(costs)), 100*v/t.Step.DurationMs)
	}
	return tw.Flush()
}
