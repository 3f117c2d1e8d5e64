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
	Name                               string
	Count                              int
	TotalMs, MeanMs, P50Ms, P90Ms, Max float64
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
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TotalMs > out[j].TotalMs })
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
	children := map[string][]Span{}
	for _, s := range spans {
		if s.ParentSpanID != "" {
			children[s.ParentSpanID] = append(children[s.ParentSpanID], s)
		}
	}
	b := StepBreakdown{Root: root}
	parts := map[string]*NameStats{}
	for _, s := range spans {
		if s.Name != root {
			continue
		}
		b.Steps++
		b.TotalMs += s.DurationMs
		// Children may overlap (parallel fan-out): self time is the root minus the union of
		// its children's intervals.
		var iv [][2]float64
		for _, c := range children[s.SpanID] {
			p := parts[c.Name]
			if p == nil {
				p = &NameStats{Name: c.Name}
				parts[c.Name] = p
			}
			p.Count++
			p.TotalMs += c.DurationMs
			p.Max = max(p.Max, c.DurationMs)
			a := float64(c.Start.Sub(s.Start).Microseconds()) / 1000
			iv = append(iv, [2]float64{a, a + c.DurationMs})
		}
		b.SelfMs += s.DurationMs - union(iv)
	}
	for _, p := range parts {
		p.MeanMs = p.TotalMs / float64(p.Count)
		b.Parts = append(b.Parts, *p)
	}
	sort.Slice(b.Parts, func(i, j int) bool { return b.Parts[i].TotalMs > b.Parts[j].TotalMs })
	return b
}

func union(iv [][2]float64) float64 {
	if len(iv) == 0 {
		return 0
	}
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

// WriteReport prints the per-name table and the breakdown of every step-like root present.
func WriteReport(w io.Writer, spans []Span) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "span\tcount\ttotal ms\tmean ms\tp50 ms\tp90 ms\tmax ms\t")
	for _, s := range Summarize(spans) {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", s.Name, s.Count, s.TotalMs, s.MeanMs, s.P50Ms, s.P90Ms, s.Max)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, root := range []string{"engine.step", "attnd.step", "attnd.experts"} {
		b := Breakdown(spans, root)
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
	return nil
}
