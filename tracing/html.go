package tracing

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The HTML report is one self-contained file: inline CSS and SVG, no script, no external
// resource. Every string from the span file (names, attribute values, status messages) goes
// through html/template, so a span named "<script>" is shown, never run.
//
// Its size is bounded whatever the trace: the timeline draws at most HTMLOptions.MaxSteps rows
// of at most maxBarsPerStep spans each, the per-request view at most HTMLOptions.MaxRequests
// charts of at most maxChartBars bars (longer requests are binned), the per-step chart at most
// maxChartBars bars, the summary at most maxSummaryRows names and each tooltip at most
// maxTipAttrs attributes of at most maxTipValue bytes (maxTip in all). With the defaults a report stays
// under MaxHTMLBytes (the tests check a trace of thousands of steps against it).

// Defaults and limits of the HTML report.
const (
	DefaultHTMLMaxSteps    = 20
	DefaultHTMLMaxRequests = 30
	// MaxHTMLSteps and MaxHTMLRequests bound the options.
	MaxHTMLSteps    = 200
	MaxHTMLRequests = 200
	// MaxHTMLBytes is the size a report with the default options stays under.
	MaxHTMLBytes = 4 << 20

	maxBarsPerStep = 300 // spans drawn in one timeline row: the longest
	maxChartBars   = 100 // bars in a per-request or per-step chart; more steps are binned
	maxSummaryRows = 500
	maxName        = 120 // bytes of a span name, service or request id shown
	maxTipAttrs    = 8
	maxTipValue    = 80
	maxTip         = 320 // bytes of a span's tooltip
	histBins       = 40
)

// HTMLOptions configures WriteHTML. Zero fields take the defaults.
type HTMLOptions struct {
	// Title heads the page ("dlmesh latency report").
	Title string
	// Source names the span file in the page's header.
	Source string
	// MaxSteps is the number of step rows in the timeline (DefaultHTMLMaxSteps, at most
	// MaxHTMLSteps): every step when there are no more, else the slowest.
	MaxSteps int
	// MaxRequests is the number of gateway.generate requests charted (DefaultHTMLMaxRequests,
	// at most MaxHTMLRequests): every request when there are no more, else the slowest.
	MaxRequests int
}

// Validate checks o.
func (o HTMLOptions) Validate() error {
	if o.MaxSteps < 0 || o.MaxSteps > MaxHTMLSteps {
		return fmt.Errorf("%w: max_steps %d not in [0 (default), %d]", ErrBadConfig, o.MaxSteps, MaxHTMLSteps)
	}
	if o.MaxRequests < 0 || o.MaxRequests > MaxHTMLRequests {
		return fmt.Errorf("%w: max_requests %d not in [0 (default), %d]", ErrBadConfig, o.MaxRequests, MaxHTMLRequests)
	}
	return nil
}

func (o HTMLOptions) withDefaults() HTMLOptions {
	if o.Title == "" {
		o.Title = "dlmesh latency report"
	}
	if o.MaxSteps == 0 {
		o.MaxSteps = DefaultHTMLMaxSteps
	}
	if o.MaxRequests == 0 {
		o.MaxRequests = DefaultHTMLMaxRequests
	}
	return o
}

//go:embed report.html.tmpl
var reportTmplText string

var reportTmpl = template.Must(template.New("report").Parse(reportTmplText))

// WriteHTML writes the latency report of spans as one self-contained HTML page: the per-name
// table of WriteReport, where each step's time went (StepCosts, per step), a timeline of the
// steps with their nested spans, a histogram of step durations, and per gateway.generate
// request the latency of its steps.
func WriteHTML(w io.Writer, spans []Span, opts HTMLOptions) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	r := buildReport(spans, opts.withDefaults())
	if err := reportTmpl.Execute(w, r); err != nil {
		return fmt.Errorf("tracing: write html report: %w", err)
	}
	return nil
}

// report is what the template renders; numbers are preformatted.
type report struct {
	Title, Source, Period string
	Spans, Steps, Reqs    int
	Summary               []summaryRow
	SummaryMore           int
	Costs                 []costRow
	CostChart             chart
	Timeline              timeline
	Hist                  chart
	Legend                []legendItem
	Requests              []requestView
	RequestsNote          string
}

type summaryRow struct {
	Name                            string
	Count                           int
	Total, Mean, P50, P90, P95, Max string
}

type costRow struct{ Name, Class, Total, PerStep, Share string }

type legendItem struct{ Class, Label string }

// chart is an SVG bar chart: every bar a stack of segments with one tooltip.
type chart struct {
	Class                                string // costs, hist or req
	W, H                                 int
	Left, Right, Top, Bottom, TickX, Mid int
	Bars                                 []chartBar
	YTicks                               []tick
	XTicks                               []tick
	Bands                                []band
	XLabel                               string
	YLabel                               string
	Lines                                []tick // vertical markers (p50, p95)
}

type chartBar struct {
	Tip  string
	Segs []rect
}

type rect struct{ Class, X, Y, W, H string }

type tick struct{ Pos, Label string }

type band struct {
	X, W, Label, Tip string
	Odd              bool
}

type timeline struct {
	W, H    int
	PxPerMs string
	Rows    []timelineRow
	Ticks   []tick
	Note    string
	AxisY   string
}

type timelineRow struct {
	Y, Mid, H string
	Label     string
	Tip       string
	Bars      []spanBar
}

type spanBar struct {
	Class, X, Y, W, H string
	Tip               string
}

type requestView struct {
	ID, Status, Summary string
	Chart               chart
}

// Layout constants (px).
const (
	plotW   = 960
	labelW  = 170
	laneH   = 6
	laneGap = 1
	rowGap  = 8
	chartH  = 160
	reqH    = 110
	axisH   = 36
	topPad  = 16
)

func f1(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) }
func f2(x float64) string { return strconv.FormatFloat(x, 'f', 2, 64) }

func buildReport(spans []Span, o HTMLOptions) *report {
	ix := newIndex(spans)
	r := &report{Title: o.Title, Source: o.Source, Spans: len(spans)}
	if len(spans) > 0 {
		lo, hi := spans[0].Start, spans[0].End
		for _, s := range spans {
			if s.Start.Before(lo) {
				lo = s.Start
			}
			if s.End.After(hi) {
				hi = s.End
			}
		}
		r.Period = fmt.Sprintf("%s to %s (%.1f s)", lo.UTC().Format(time.RFC3339Nano), hi.UTC().Format(time.RFC3339Nano), hi.Sub(lo).Seconds())
	}
	sum := Summarize(spans)
	for _, s := range sum[:min(len(sum), maxSummaryRows)] {
		r.Summary = append(r.Summary, summaryRow{Name: clip(s.Name, maxName), Count: s.Count, Total: f1(s.TotalMs), Mean: f2(s.MeanMs),
			P50: f2(s.P50Ms), P90: f2(s.P90Ms), P95: f2(s.P95Ms), Max: f2(s.Max)})
	}
	r.SummaryMore = len(sum) - len(r.Summary)
	costs := ix.stepCosts()
	r.Steps = len(costs)
	if len(costs) > 0 {
		t := CostTotals(costs)
		for _, p := range costParts {
			v := p.get(t)
			if v == 0 && p.Class == "untraced" {
				continue
			}
			r.Costs = append(r.Costs, costRow{Name: p.Name, Class: p.Class, Total: f1(v), PerStep: f2(v / float64(len(costs))),
				Share: fmt.Sprintf("%.0f%%", 100*v/t.Step.DurationMs)})
		}
		r.CostChart = costChart(costs)
		r.Timeline = buildTimeline(ix, costs, o.MaxSteps)
		r.Hist = histogram(costs)
	}
	r.Legend = legend
	r.Requests, r.Reqs, r.RequestsNote = buildRequests(ix, costs, o.MaxRequests)
	return r
}

// spanClass colours a span by what it is: a gRPC hop (client or server side) or the work of
// one service.
func spanClass(s Span) string {
	switch {
	case s.Kind == "client":
		return "k-client"
	case s.Kind == "server":
		return "k-server"
	case s.Name == SpanAttndExperts:
		return "k-experts"
	}
	for _, p := range []string{"engine", "gateway", "attnd", "expertd"} {
		if strings.HasPrefix(s.Name, p+".") {
			return "k-" + p
		}
	}
	return "k-other"
}

var legend = []legendItem{
	{"k-engine", "engine step"}, {"k-gateway", "gateway"}, {"k-client", "gRPC client (hop out)"},
	{"k-server", "gRPC server (hop in)"}, {"k-attnd", "attnd"}, {"k-experts", "attnd.experts fan-out"},
	{"k-expertd", "expertd compute"}, {"k-other", "other"},
}

// spanTip is a span's tooltip: name, duration, status and its key attributes, at most maxTip
// bytes.
func spanTip(s Span) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s — %.3f ms", clip(s.Name, maxName), s.DurationMs)
	if s.Service != "" || s.Kind != "" {
		fmt.Fprintf(&b, " (%s %s)", clip(s.Service, maxName), clip(s.Kind, maxName))
	}
	if s.Status.Code == "Error" {
		fmt.Fprintf(&b, "\nERROR: %s", clip(s.Status.Message, maxTipValue))
	}
	keys := make([]string, 0, len(s.Attributes))
	for k := range s.Attributes {
		if k != "rpc.system.name" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for n, k := range keys {
		if n == maxTipAttrs {
			fmt.Fprintf(&b, "\n… %d more attributes", len(keys)-n)
			break
		}
		fmt.Fprintf(&b, "\n%s = %s", clip(k, maxTipValue), clip(fmt.Sprint(s.Attributes[k]), maxTipValue))
	}
	return clip(b.String(), maxTip)
}

// clip cuts s to at most n bytes (on a rune boundary), marking the cut with "…".
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// costTip describes one step's cost.
func costTip(c StepCost) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%.2f ms", c.Step.DurationMs)
	for _, p := range costParts {
		if v := p.get(c); v != 0 {
			fmt.Fprintf(&b, "\n%s %.2f ms", p.Name, v)
		}
	}
	return b.String()
}

// stackIn is one bar of a stacked chart before layout: its parts in ms (costParts order).
type stackIn struct {
	parts [4]float64
	total float64 // the bar's height in ms (the parts are scaled to it when they differ)
	tip   string
}

func partsOf(c StepCost) [4]float64 {
	var p [4]float64
	for k, cp := range costParts {
		p[k] = max(cp.get(c), 0)
	}
	return p
}

// binStacks merges consecutive bars into at most maxChartBars bars (means per bar), labelled by
// their index range (1-based, with the noun unit).
func binStacks(in []stackIn, unit string) []stackIn {
	if len(in) <= maxChartBars {
		return in
	}
	per := (len(in) + maxChartBars - 1) / maxChartBars
	var out []stackIn
	for lo := 0; lo < len(in); lo += per {
		hi := min(lo+per, len(in))
		var s stackIn
		mx := 0.0
		for _, b := range in[lo:hi] {
			for k := range s.parts {
				s.parts[k] += b.parts[k]
			}
			s.total += b.total
			mx = max(mx, b.total)
		}
		n := float64(hi - lo)
		for k := range s.parts {
			s.parts[k] /= n
		}
		s.total /= n
		s.tip = fmt.Sprintf("%s %d–%d: mean %.2f ms, max %.2f ms", unit, lo+1, hi, s.total, mx)
		for k, cp := range costParts {
			if s.parts[k] != 0 {
				s.tip += fmt.Sprintf("\n%s %.2f ms (mean)", cp.Name, s.parts[k])
			}
		}
		out = append(out, s)
	}
	return out
}

func newChart(class string, h int, xlabel, ylabel string) chart {
	return chart{Class: class, W: labelW + plotW + 10, H: h + axisH + topPad, Left: labelW, Right: labelW + plotW, Top: topPad, Bottom: topPad + h,
		TickX: labelW - 6, Mid: labelW + plotW/2, XLabel: xlabel, YLabel: ylabel}
}

// stackChart lays out stacked bars, heights in ms on a common scale.
func stackChart(class string, in []stackIn, h int, xlabel string, xmax int) chart {
	c := newChart(class, h, xlabel, "ms")
	top := 0.0
	for _, b := range in {
		top = max(top, b.total)
	}
	ymax, yticks := niceAxis(top)
	scale := float64(h) / ymax
	for _, t := range yticks {
		y, _ := strconv.ParseFloat(t.Pos, 64)
		c.YTicks = append(c.YTicks, tick{Pos: f1(float64(topPad+h) - y*scale), Label: t.Label})
	}
	bw := float64(plotW) / float64(max(len(in), 1))
	gap := 0.0
	if bw > 4 {
		gap = 1
	}
	for k, b := range in {
		x := float64(labelW) + float64(k)*bw
		sum := b.parts[0] + b.parts[1] + b.parts[2] + b.parts[3]
		f := 1.0
		if sum > 0 {
			f = b.total / sum
		}
		y := float64(topPad + h)
		bar := chartBar{Tip: b.tip}
		if sum == 0 {
			hh := b.total * scale
			bar.Segs = append(bar.Segs, rect{Class: "untraced", X: f1(x), Y: f1(y - hh), W: f1(bw - gap), H: f1(hh)})
		}
		for p, v := range b.parts {
			if v <= 0 {
				continue
			}
			hh := v * f * scale
			y -= hh
			bar.Segs = append(bar.Segs, rect{Class: costParts[p].Class, X: f1(x), Y: f1(y), W: f1(bw - gap), H: f1(hh)})
		}
		c.Bars = append(c.Bars, bar)
	}
	if xmax > 0 {
		for _, t := range xTicks(len(in), xmax) {
			c.XTicks = append(c.XTicks, tick{Pos: f1(float64(labelW) + (t.pos+0.5)*bw), Label: t.label})
		}
	}
	return c
}

type xt struct {
	pos   float64
	label string
}

// xTicks labels about six bars of n with their item number, of items total.
func xTicks(n, items int) []xt {
	var out []xt
	step := max(1, n/6)
	for k := 0; k < n; k += step {
		out = append(out, xt{pos: float64(k), label: strconv.Itoa(k*items/n + 1)})
	}
	return out
}

// niceAxis returns a round upper bound ≥ top and its ticks (values in Pos, unscaled).
func niceAxis(top float64) (float64, []tick) {
	if top <= 0 || math.IsNaN(top) || math.IsInf(top, 0) {
		top = 1
	}
	raw := top / 4
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	ymax := math.Ceil(top/step) * step
	var ticks []tick
	for v := 0.0; v <= ymax+step/2; v += step {
		ticks = append(ticks, tick{Pos: strconv.FormatFloat(v, 'f', -1, 64), Label: strconv.FormatFloat(v, 'g', 4, 64)})
	}
	return ymax, ticks
}

func costChart(costs []StepCost) chart {
	in := make([]stackIn, len(costs))
	for k, c := range costs {
		in[k] = stackIn{parts: partsOf(c), total: c.Step.DurationMs,
			tip: fmt.Sprintf("step %d (%s)\n%s", k+1, c.Step.Name, costTip(c))}
		if n, ok := c.Step.Attributes["requests"].(int64); ok {
			in[k].tip += fmt.Sprintf("\n%d request(s) in the batch", n)
		}
	}
	return stackChart("costs", binStacks(in, "steps"), chartH, "step (in start order)", len(costs))
}

func histogram(costs []StepCost) chart {
	c := newChart("hist", chartH, "step duration (ms)", "steps")
	ds := make([]float64, len(costs))
	for k, s := range costs {
		ds[k] = s.Step.DurationMs
	}
	slices.Sort(ds)
	xmax, xt := niceAxis(ds[len(ds)-1])
	counts := make([]int, histBins)
	for _, d := range ds {
		counts[min(histBins-1, max(0, int(d/xmax*histBins)))]++
	}
	cmax := slices.Max(counts)
	ymax, yt := niceAxis(float64(cmax))
	yscale := float64(chartH) / ymax
	bw := float64(plotW) / histBins
	for b, n := range counts {
		lo, hi := xmax*float64(b)/histBins, xmax*float64(b+1)/histBins
		hh := float64(n) * yscale
		c.Bars = append(c.Bars, chartBar{Tip: fmt.Sprintf("%.2f–%.2f ms: %d steps", lo, hi, n),
			Segs: []rect{{Class: "bin", X: f1(float64(labelW) + float64(b)*bw), Y: f1(float64(topPad+chartH) - hh), W: f1(bw - 1), H: f1(hh)}}})
	}
	for _, t := range yt {
		v, _ := strconv.ParseFloat(t.Pos, 64)
		c.YTicks = append(c.YTicks, tick{Pos: f1(float64(topPad+chartH) - v*yscale), Label: t.Label})
	}
	for _, t := range xt {
		v, _ := strconv.ParseFloat(t.Pos, 64)
		c.XTicks = append(c.XTicks, tick{Pos: f1(float64(labelW) + v/xmax*plotW), Label: t.Label})
	}
	for _, q := range []struct {
		name string
		v    float64
	}{{"p50", ds[len(ds)/2]}, {"p95", ds[min(len(ds)-1, len(ds)*95/100)]}} {
		c.Lines = append(c.Lines, tick{Pos: f1(float64(labelW) + q.v/xmax*plotW), Label: fmt.Sprintf("%s %.2f ms", q.name, q.v)})
	}
	return c
}
