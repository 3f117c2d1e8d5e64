package tracing

import "sort"

// index links the spans of a file: by span id and by parent. Span ids are random 64-bit
// values, so a file holding several traces does not mix them up in practice.
type index struct {
	spans    []Span
	byID     map[string]int
	children map[string][]int // parent span id → spans, in start order
}

func newIndex(spans []Span) *index {
	ix := &index{spans: spans, byID: make(map[string]int, len(spans)), children: map[string][]int{}}
	for i, s := range spans {
		if s.SpanID != "" {
			ix.byID[s.SpanID] = i
		}
		if s.ParentSpanID != "" {
			ix.children[s.ParentSpanID] = append(ix.children[s.ParentSpanID], i)
		}
	}
	for _, c := range ix.children {
		sort.SliceStable(c, func(a, b int) bool { return spans[c[a]].Start.Before(spans[c[b]].Start) })
	}
	return ix
}

// maxDepth bounds walks up and down the tree, so a file whose parent links form a cycle (a
// hand-edited or corrupt one) cannot loop forever.
const maxDepth = 64

// ancestor returns the nearest ancestor of span i named name, or -1.
func (ix *index) ancestor(i int, name string) int {
	for d := 0; d < maxDepth; d++ {
		p, ok := ix.byID[ix.spans[i].ParentSpanID]
		if !ok || ix.spans[i].ParentSpanID == "" {
			return -1
		}
		if ix.spans[p].Name == name {
			return p
		}
		i = p
	}
	return -1
}

// descendants calls fn for every descendant of span i, depth first in start order, with its
// depth below i (1 for a child). fn returns false to skip that span's own descendants.
func (ix *index) descendants(i int, fn func(j, depth int) bool) {
	var walk func(i, depth int)
	walk = func(i, depth int) {
		if depth > maxDepth {
			return
		}
		for _, j := range ix.children[ix.spans[i].SpanID] {
			if fn(j, depth) {
				walk(j, depth+1)
			}
		}
	}
	walk(i, 1)
}

// relMs is the interval of span s in ms from t0 = root's start.
func relMs(root, s Span) [2]float64 {
	a := float64(s.Start.Sub(root.Start).Nanoseconds()) / 1e6
	return [2]float64{a, a + s.DurationMs}
}
