package tracing_test

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/dlmesh/dlmesh/tracing"
)

// render writes the HTML report of spans and parses it.
func render(tb testing.TB, spans []tracing.Span, opts tracing.HTMLOptions) ([]byte, *html.Node) {
	tb.Helper()
	var buf bytes.Buffer
	t0 := time.Now()
	if err := tracing.WriteHTML(&buf, spans, opts); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("%d spans: %d bytes of HTML in %v", len(spans), buf.Len(), time.Since(t0))
	doc, err := html.Parse(bytes.NewReader(buf.Bytes()))
	if err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes(), doc
}

func walk(n *html.Node, fn func(*html.Node)) {
	fn(n)
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		walk(c, fn)
	}
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func num(tb testing.TB, n *html.Node, key string) float64 {
	tb.Helper()
	v, err := strconv.ParseFloat(attr(n, key), 64)
	if err != nil {
		tb.Fatalf("<%s %s=%q>: %v", n.Data, key, attr(n, key), err)
	}
	return v
}

// find returns the elements named tag (any namespace) whose class list holds class ("" for any),
// below root in document order.
func find(root *html.Node, tag, class string) []*html.Node {
	var out []*html.Node
	walk(root, func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == tag && (class == "" || slices.Contains(strings.Fields(attr(n, "class")), class)) {
			out = append(out, n)
		}
	})
	return out
}

func one(tb testing.TB, root *html.Node, tag, class string) *html.Node {
	tb.Helper()
	ns := find(root, tag, class)
	if len(ns) != 1 {
		tb.Fatalf("%d <%s class=%s> elements, want 1", len(ns), tag, class)
	}
	return ns[0]
}

func text(n *html.Node) string {
	var b strings.Builder
	walk(n, func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
	})
	return b.String()
}

// ownText is the text directly inside n (not in its child elements, such as its tooltip).
func ownText(n *html.Node) string {
	var b strings.Builder
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.TextNode {
			b.WriteString(c.Data)
		}
	}
	return b.String()
}

// tooltip is the text of n's <title> child ("" without one).
func tooltip(n *html.Node) string {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && c.Data == "title" {
			return text(c)
		}
	}
	return ""
}

// tree is the test's own view of the span tree, to check the report against.
type tree struct {
	kids map[string][]tracing.Span
}

func newTree(spans []tracing.Span) tree {
	t := tree{kids: map[string][]tracing.Span{}}
	for _, s := range spans {
		if s.ParentSpanID != "" {
			t.kids[s.ParentSpanID] = append(t.kids[s.ParentSpanID], s)
		}
	}
	return t
}

// below counts the descendants of s by name.
func (t tree) below(s tracing.Span) map[string]int {
	out := map[string]int{}
	var rec func(id string)
	rec = func(id string) {
		for _, c := range t.kids[id] {
			out[c.Name]++
			rec(c.SpanID)
		}
	}
	rec(s.SpanID)
	return out
}

var tipRE = regexp.MustCompile(`^(.+) — ([0-9.]+) ms`)

// checkTimeline checks every timeline row against the steps: one row per step shown, one bar
// per span below it, each bar as wide as its duration on the page's scale, a tooltip on every
// bar, and no two bars of a lane overlapping. It returns the step numbers of the rows.
func checkTimeline(t *testing.T, doc *html.Node, spans []tracing.Span, costs []tracing.StepCost, wantRows int) []int {
	t.Helper()
	tl := one(t, doc, "svg", "timeline")
	scale := num(t, tl, "data-px-per-ms")
	rows := find(tl, "g", "row")
	if len(rows) != wantRows {
		t.Fatalf("%d timeline rows, want %d (of %d steps)", len(rows), wantRows, len(costs))
	}
	tr := newTree(spans)
	var nums []int
	for _, row := range rows {
		label := strings.Fields(ownText(find(row, "text", "rl")[0]))
		k, err := strconv.Atoi(strings.TrimPrefix(label[len(label)-3], "#"))
		if err != nil || k < 1 || k > len(costs) {
			t.Fatalf("row label %q", label)
		}
		nums = append(nums, k)
		step := costs[k-1].Step
		rects := find(row, "rect", "")
		below := tr.below(step)
		total := 1
		for _, n := range below {
			total += n
		}
		if len(rects) != total {
			t.Errorf("row #%d: %d bars, want %d (the step and every span below it)", k, len(rects), total)
		}
		drawn := map[string]int{}
		for j, r := range rects {
			tip := tooltip(r)
			m := tipRE.FindStringSubmatch(tip)
			if m == nil {
				t.Fatalf("row #%d bar %d: tooltip %q", k, j, tip)
			}
			drawn[m[1]]++
			ms, _ := strconv.ParseFloat(m[2], 64)
			if w := num(t, r, "width"); math.Abs(w-ms*scale) > 0.006+0.0005*scale {
				t.Errorf("row #%d %s: width %.3f px for %.3f ms at %.4f px/ms", k, m[1], w, ms, scale)
			}
			if j == 0 && (m[1] != step.Name || math.Abs(ms-step.DurationMs) > 0.0005) {
				t.Errorf("row #%d: first bar %q %.3f ms, want the step %s %.3f ms", k, m[1], ms, step.Name, step.DurationMs)
			}
		}
		for name, n := range below {
			if drawn[name] != n {
				t.Errorf("row #%d: %d %s bars, want %d", k, drawn[name], name, n)
			}
		}
		for a := range rects {
			for b := a + 1; b < len(rects); b++ {
				ra, rb := rects[a], rects[b]
				if attr(ra, "y") != attr(rb, "y") {
					continue
				}
				xa, xb := num(t, ra, "x"), num(t, rb, "x")
				if xa < xb+num(t, rb, "width")-0.02 && xb < xa+num(t, ra, "width")-0.02 {
					t.Errorf("row #%d: overlapping bars on one lane: %q and %q", k, tooltip(ra), tooltip(rb))
				}
			}
		}
	}
	return nums
}

// barHeights returns, per g.bar of a chart, its segments' heights by class and their sum.
func barHeights(t *testing.T, svg *html.Node) []map[string]float64 {
	var out []map[string]float64
	for _, g := range find(svg, "g", "bar") {
		if tooltip(g) == "" {
			t.Errorf("chart bar without a tooltip")
		}
		h := map[string]float64{}
		for _, r := range find(g, "rect", "") {
			v := num(t, r, "height")
			h[attr(r, "class")] += v
			h[""] += v
		}
		out = append(out, h)
	}
	return out
}

// checkProportional checks that got[i] = scale·want[i] for one scale, to a quarter pixel (every
// segment of a stacked bar is rounded to 0.1 px).
func checkProportional(t *testing.T, what string, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d bars, want %d", what, len(got), len(want))
	}
	var sg, sw float64
	for i := range got {
		sg, sw = sg+got[i], sw+want[i]
	}
	scale := sg / sw
	for i := range got {
		if math.Abs(got[i]-want[i]*scale) > 0.25 {
			t.Errorf("%s: bar %d is %.2f px for %.3f ms, want %.2f px (%.4f px/ms)", what, i, got[i], want[i], want[i]*scale, scale)
		}
	}
}

// TestHTMLGoldenMesh renders the span file of a real mesh run and checks the page against the
// spans: the summary has the text report's figures, the timeline one row per step with a bar per
// span, the per-step chart and every request's chart bars proportional to the durations.
func TestHTMLGoldenMesh(t *testing.T) {
	spans := goldenSpans(t)
	costs := tracing.StepCosts(spans)
	if len(costs) < 2 {
		t.Fatalf("golden trace has %d steps; regenerate it with -update", len(costs))
	}
	page, doc := render(t, spans, tracing.HTMLOptions{Source: goldenTrace})

	// Self-contained: nothing to run, nothing to fetch.
	walk(doc, func(n *html.Node) {
		if n.Type != html.ElementNode {
			return
		}
		switch n.Data {
		case "script", "link", "img", "iframe", "object", "embed":
			t.Errorf("<%s> in the page", n.Data)
		}
		if attr(n, "src") != "" || (attr(n, "href") != "" && !strings.HasPrefix(attr(n, "href"), "#")) {
			t.Errorf("<%s> refers outside the page: %v", n.Data, n.Attr)
		}
	})

	sum := tracing.Summarize(spans)
	rows := find(one(t, doc, "table", "summary"), "tr", "")[1:]
	if len(rows) != len(sum) {
		t.Fatalf("%d summary rows, want %d", len(rows), len(sum))
	}
	for i, r := range rows {
		var cells []string
		for _, td := range find(r, "td", "") {
			cells = append(cells, text(td))
		}
		s := sum[i]
		want := []string{s.Name, strconv.Itoa(s.Count), fmt.Sprintf("%.1f", s.TotalMs), fmt.Sprintf("%.2f", s.MeanMs),
			fmt.Sprintf("%.2f", s.P50Ms), fmt.Sprintf("%.2f", s.P90Ms), fmt.Sprintf("%.2f", s.P95Ms), fmt.Sprintf("%.2f", s.Max)}
		if !slices.Equal(cells, want) {
			t.Errorf("summary row %d: %q, want %q", i, cells, want)
		}
	}

	nums := checkTimeline(t, doc, spans, costs, min(len(costs), tracing.DefaultHTMLMaxSteps))
	if !slices.IsSorted(nums) {
		t.Errorf("with every step shown, rows in start order: %v", nums)
	}

	// Where each step's time went: one stacked bar per step, parts as StepCosts says.
	bars := barHeights(t, one(t, doc, "svg", "costs"))
	var got, want []float64
	for i, b := range bars {
		got, want = append(got, b[""]), append(want, costs[i].Step.DurationMs)
		if e := b["experts"] / b[""]; math.Abs(e-costs[i].ExpertsMs/costs[i].Step.DurationMs) > 0.01 {
			t.Errorf("step %d: experts %.3f of the bar, want %.3f", i+1, e, costs[i].ExpertsMs/costs[i].Step.DurationMs)
		}
	}
	checkProportional(t, "per-step chart", got, want)

	hist := 0
	for _, g := range find(one(t, doc, "svg", "hist"), "g", "bar") {
		f := strings.Fields(tooltip(g))
		n, _ := strconv.Atoi(f[len(f)-2])
		hist += n
	}
	if hist != len(costs) {
		t.Errorf("histogram counts %d steps, want %d", hist, len(costs))
	}

	// Per request: one bar per gateway.step, in start order, as high as the step took.
	tr := newTree(spans)
	reqs := find(doc, "div", "request")
	var gens []tracing.Span
	for _, s := range spans {
		if s.Name == tracing.SpanGenerate {
			gens = append(gens, s)
		}
	}
	slices.SortFunc(gens, func(a, b tracing.Span) int { return a.Start.Compare(b.Start) })
	if len(reqs) != len(gens) || len(gens) != 2 {
		t.Fatalf("%d request views, %d gateway.generate spans, want 2", len(reqs), len(gens))
	}
	shared := false
	for i, g := range gens {
		if h := text(find(reqs[i], "h3", "")[0]); !strings.Contains(h, g.Attributes["request_id"].(string)) {
			t.Errorf("request %d heading %q lacks its id", i, h)
		}
		var steps []tracing.Span
		for _, b := range tr.kids[g.SpanID] {
			steps = append(steps, tr.kids[b.SpanID]...)
		}
		slices.SortFunc(steps, func(a, b tracing.Span) int { return a.Start.Compare(b.Start) })
		var got, want []float64
		for j, b := range barHeights(t, one(t, reqs[i], "svg", "req")) {
			got, want = append(got, b[""]), append(want, steps[j].DurationMs)
		}
		checkProportional(t, fmt.Sprintf("request %d", i), got, want)
		shared = shared || strings.Contains(text(reqs[i]), "shared by 2 requests")
	}
	if !shared {
		t.Error("no step tooltip says it served both requests")
	}
	if !bytes.Contains(page, []byte(goldenTrace)) {
		t.Error("the page does not name its source")
	}
}

// TestHTMLEscapes feeds hostile strings through every place the page shows them.
func TestHTMLEscapes(t *testing.T) {
	const evil = `<script>alert("x")</script>`
	const evilID = `"><img src=x onerror=alert(1)>`
	t0 := time.Unix(1000, 0)
	spans := []tracing.Span{
		{Name: "gateway.generate", SpanID: "g", Start: t0, DurationMs: 30, Attributes: tracing.Attributes{"request_id": evilID},
			Status: tracing.Status{Code: "Error", Message: "</title>" + evil}},
		{Name: "gateway.block", SpanID: "b", ParentSpanID: "g", Start: t0, DurationMs: 20},
		{Name: "gateway.step", SpanID: "s", ParentSpanID: "b", Start: t0, DurationMs: 10, Attributes: tracing.Attributes{"block": int64(0)}},
		{Name: "engine.step", SpanID: "e", Start: t0, DurationMs: 10},
		{Name: evil, SpanID: "x", ParentSpanID: "e", Start: t0, DurationMs: 5, Attributes: tracing.Attributes{evil: evilID}},
	}
	page, doc := render(t, spans, tracing.HTMLOptions{Title: evil, Source: evilID})
	for _, bad := range []string{"<script", "<img"} {
		if bytes.Contains(page, []byte(bad)) {
			t.Errorf("page holds %q unescaped", bad)
		}
	}
	if n := len(find(doc, "script", "")) + len(find(doc, "img", "")); n != 0 {
		t.Errorf("%d script/img elements parsed from the page", n)
	}
	var tips []string
	walk(doc, func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == "title" {
			tips = append(tips, text(n))
		}
	})
	all := strings.Join(tips, "\n")
	for _, s := range []string{evil + " — 5.000 ms", evil + " = " + evilID} {
		if !strings.Contains(all, s) {
			t.Errorf("no tooltip shows %q as text; tooltips:\n%s", s, all)
		}
	}
	if got := text(find(doc, "h1", "")[0]); got != evil {
		t.Errorf("title %q", got)
	}
	if got := text(find(one(t, doc, "div", "request"), "h3", "")[0]); !strings.Contains(got, evilID) || !strings.Contains(got, "</title>") {
		t.Errorf("request heading %q", got)
	}
	names := map[string]bool{}
	for _, r := range find(one(t, doc, "table", "summary"), "td", "") {
		names[text(r)] = true
	}
	if !names[evil] {
		t.Errorf("the summary does not show the span name %q as text", evil)
	}
}

// bigTrace makes a trace past every limit of the report: steps, bars per step, requests, steps
// per request, span names, attribute sizes.
func bigTrace(steps, slow, reqs, reqSteps, names int) []tracing.Span {
	t0 := time.Unix(5000, 0)
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }
	var spans []tracing.Span
	id := 0
	add := func(name, parent string, start, dur float64, attrs tracing.Attributes) string {
		id++
		s := tracing.Span{Name: name, SpanID: fmt.Sprintf("%016x", id), ParentSpanID: parent, Start: at(start), End: at(start + dur),
			DurationMs: dur, Attributes: attrs, Service: "dlmesh-up", Kind: "internal", Status: tracing.Status{Code: "Unset"}}
		spans = append(spans, s)
		return s.SpanID
	}
	long := strings.Repeat("x", 500)
	fat := tracing.Attributes{}
	for k := range 12 {
		fat[fmt.Sprintf("attr.%d.%s", k, long[:100])] = long
	}
	for k := range steps {
		start := float64(k) * 20
		dur := 10 + float64(k%7)
		fan := 2
		attrs := tracing.Attributes{"requests": int64(4)}
		if k%(steps/slow) == 0 {
			dur, fan, attrs = 19, 200, fat // the slowest: far more spans than a row draws
		}
		e := add("engine.step", "", start, dur, attrs)
		a := add("attnd.step", e, start+0.5, dur-1, attrs)
		for f := range fan {
			x := add("attnd.experts", a, start+1+float64(f%8), 1, attrs)
			add("expertd.compute", x, start+1.2+float64(f%8), 0.5, attrs)
		}
	}
	for r := range reqs {
		start := float64(r) * 3
		g := add("gateway.generate", "", start, 5+float64(r%11), tracing.Attributes{"request_id": fmt.Sprintf("req-%d-%s", r, long)})
		b := ""
		for s := range reqSteps {
			if s%50 == 0 {
				b = add("gateway.block", g, start, 1, nil)
			}
			add("gateway.step", b, start+float64(s)*0.01, 0.01, tracing.Attributes{"block": int64(s / 50), "step": int64(s%50 + 1)})
		}
	}
	for n := range names {
		add(fmt.Sprintf("name-%d-%s", n, long), "", 0, 1, nil)
	}
	return spans
}

// TestHTMLBoundedSize: a trace far past every limit still gives a page under MaxHTMLBytes,
// with the slowest steps and requests shown and the rest summarised.
func TestHTMLBoundedSize(t *testing.T) {
	const steps, slow, reqs, reqSteps, names = 3000, 30, 300, 250, 700
	spans := bigTrace(steps, slow, reqs, reqSteps, names)
	page, doc := render(t, spans, tracing.HTMLOptions{})
	if len(page) > tracing.MaxHTMLBytes {
		t.Errorf("%d bytes of HTML for %d spans, want at most %d", len(page), len(spans), tracing.MaxHTMLBytes)
	}
	costs := tracing.StepCosts(spans)
	rows := find(one(t, doc, "svg", "timeline"), "g", "row")
	if len(rows) != tracing.DefaultHTMLMaxSteps {
		t.Fatalf("%d timeline rows, want %d", len(rows), tracing.DefaultHTMLMaxSteps)
	}
	for _, row := range rows {
		label := strings.Fields(ownText(find(row, "text", "rl")[0]))
		if label[len(label)-2] != "19.00" {
			t.Errorf("row %q is not one of the slowest steps (19 ms)", label)
		}
		if n := len(find(row, "rect", "")); n < 100 || n > 400 {
			t.Errorf("row %q: %d bars", label, n)
		}
	}
	if n := len(find(one(t, doc, "svg", "costs"), "g", "bar")); n > 100 || n < 50 {
		t.Errorf("%d bars for %d steps in the per-step chart", n, len(costs))
	}
	if n := len(find(doc, "div", "request")); n != tracing.DefaultHTMLMaxRequests {
		t.Errorf("%d requests shown, want %d", n, tracing.DefaultHTMLMaxRequests)
	}
	for _, svg := range find(doc, "svg", "req") {
		if n := len(find(svg, "g", "bar")); n > 100 || n < 50 {
			t.Errorf("%d bars for a request of %d steps", n, reqSteps)
		}
	}
	if !bytes.Contains(page, []byte(fmt.Sprintf("The %d slowest of %d steps", tracing.DefaultHTMLMaxSteps, steps))) ||
		!bytes.Contains(page, []byte(fmt.Sprintf("The %d slowest of %d requests", tracing.DefaultHTMLMaxRequests, reqs))) {
		t.Error("the page does not say what it left out")
	}
	if !bytes.Contains(page, []byte("more span names")) {
		t.Error("the summary does not say it left names out")
	}
}

func TestHTMLOptionsValidate(t *testing.T) {
	for _, o := range []tracing.HTMLOptions{{MaxSteps: -1}, {MaxSteps: tracing.MaxHTMLSteps + 1}, {MaxRequests: -1}, {MaxRequests: tracing.MaxHTMLRequests + 1}} {
		if err := tracing.WriteHTML(&bytes.Buffer{}, nil, o); !errors.Is(err, tracing.ErrBadConfig) {
			t.Errorf("%+v: %v, want ErrBadConfig", o, err)
		}
	}
	// No spans at all still makes a page.
	_, doc := render(t, nil, tracing.HTMLOptions{MaxSteps: 1, MaxRequests: 1})
	if len(find(doc, "h1", "")) != 1 {
		t.Error("empty trace: no page")
	}
}

// TestHTMLMicrobatchLanes: in a ping-pong step each micro-batch and everything below it get a
// band of lanes of their own, in micro-batch order, so the fan-out of one is drawn beside (and
// overlapping in time) the attention of the other, never on a lane of the other's.
func TestHTMLMicrobatchLanes(t *testing.T) {
	t0 := time.Unix(7000, 0)
	at := func(ms float64) time.Time { return t0.Add(time.Duration(ms * float64(time.Millisecond))) }
	var spans []tracing.Span
	add := func(name, id, parent string, start, dur float64, attrs tracing.Attributes) {
		spans = append(spans, tracing.Span{Name: name, SpanID: id, ParentSpanID: parent, Start: at(start), End: at(start + dur),
			DurationMs: dur, Attributes: attrs, Service: "dlmesh-up", Kind: "internal", Status: tracing.Status{Code: "Unset"}})
	}
	add("attnd.step", "s", "", 0, 20, nil)
	// micro-batch 1 starts later but its first fan-out (1-3 ms) overlaps micro-batch 0's
	// attention; their fan-outs alternate.
	add("attnd.microbatch", "m1", "s", 0.5, 19, tracing.Attributes{"index": int64(1)})
	add("attnd.microbatch", "m0", "s", 0, 19, tracing.Attributes{"index": int64(0)})
	for l := range 4 {
		start := float64(l) * 4
		add("attnd.experts", fmt.Sprintf("x0-%d", l), "m0", start+3, 2, tracing.Attributes{"layer": int64(l)})
		add("expertd.compute", fmt.Sprintf("c0-%d", l), fmt.Sprintf("x0-%d", l), start+3.2, 1, nil)
		add("attnd.experts", fmt.Sprintf("x1-%d", l), "m1", start+1, 2, tracing.Attributes{"layer": int64(l)})
		add("expertd.compute", fmt.Sprintf("c1-%d", l), fmt.Sprintf("x1-%d", l), start+1.2, 1, nil)
	}
	_, doc := render(t, spans, tracing.HTMLOptions{})
	checkTimeline(t, doc, spans, tracing.StepCosts(spans), 1)
	rects := find(find(one(t, doc, "svg", "timeline"), "g", "row")[0], "rect", "")
	top := map[string]float64{} // micro-batch index → the y of its bar
	for _, r := range rects {
		if tip := tooltip(r); strings.HasPrefix(tip, "attnd.microbatch") {
			top[tip[strings.LastIndex(tip, "index = ")+len("index = "):]] = num(t, r, "y")
		}
	}
	if len(top) != 2 || top["0"] >= top["1"] {
		t.Fatalf("micro-batch bars at %v: want micro-batch 0 above 1", top)
	}
	// A fan-out of micro-batch 0 starts at 3 ms (+4 per layer), one of 1 at 1 ms: each must lie
	// in its own micro-batch's band, below its bar and (for 0) above 1's.
	scale := num(t, one(t, doc, "svg", "timeline"), "data-px-per-ms")
	in := map[string]int{}
	for _, r := range rects {
		tip := tooltip(r)
		if !strings.HasPrefix(tip, "attnd.experts") {
			continue
		}
		y, x := num(t, r, "y"), num(t, r, "x")
		ms := math.Mod((x-num(t, rects[0], "x"))/scale, 4)
		mb := "0"
		if math.Abs(ms-1) < 0.01 {
			mb = "1"
		}
		switch {
		case mb == "0" && y > top["0"] && y < top["1"], mb == "1" && y > top["1"]:
			in[mb]++
		default:
			t.Errorf("fan-out of micro-batch %s at y %v, outside its band (bars at %v)", mb, y, top)
		}
	}
	if in["0"] != 4 || in["1"] != 4 {
		t.Errorf("%v fan-outs in their micro-batch's band, want 4 each", in)
	}
}
