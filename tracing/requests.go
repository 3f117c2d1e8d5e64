package tracing

import (
	"fmt"
	"sort"
	"time"
)

// buildRequests charts, per gateway.generate span (every one, or the slowest maxReq), the
// latency of its steps (gateway.step spans, through gateway.block), each bar stacked like the
// engine step that served it (matched by time and service).
func buildRequests(ix *index, costs []StepCost, maxReq int) (views []requestView, total int, note string) {
	var gens []int
	for i, s := range ix.spans {
		if s.Name == SpanGenerate {
			gens = append(gens, i)
		}
	}
	if len(gens) == 0 {
		return nil, 0, ""
	}
	sort.SliceStable(gens, func(a, b int) bool { return ix.spans[gens[a]].Start.Before(ix.spans[gens[b]].Start) })
	total = len(gens)
	if len(gens) > maxReq {
		sort.SliceStable(gens, func(a, b int) bool { return ix.spans[gens[a]].DurationMs > ix.spans[gens[b]].DurationMs })
		note = fmt.Sprintf("The %d slowest of %d requests, slowest first.", maxReq, len(gens))
		gens = gens[:maxReq]
	} else {
		note = fmt.Sprintf("All %d requests, in start order.", len(gens))
	}
	engine := map[string][]StepCost{} // by service, in start order
	for _, c := range costs {
		if c.Step.Name == SpanEngineStep {
			engine[c.Step.Service] = append(engine[c.Step.Service], c)
		}
	}
	for _, g := range gens {
		views = append(views, requestOf(ix, g, engine))
	}
	return views, total, note
}

func intAttr(s Span, key string) int64 {
	v, _ := s.Attributes[key].(int64)
	return v
}

// matchStep returns the engine step of cs (in start order) that overlaps s the most.
func matchStep(cs []StepCost, s Span) (StepCost, bool) {
	end := s.Start.Add(msDuration(s.DurationMs))
	k := sort.Search(len(cs), func(k int) bool { return !cs[k].Step.Start.Before(end) })
	best, bestOv := -1, 0.0
	for j := k - 1; j >= 0 && j >= k-32; j-- {
		iv := relMs(s, cs[j].Step)
		ov := min(iv[1], s.DurationMs) - max(iv[0], 0)
		if ov > bestOv {
			best, bestOv = j, ov
		}
	}
	if best < 0 {
		return StepCost{}, false
	}
	return cs[best], true
}

func msDuration(ms float64) time.Duration { return time.Duration(ms * 1e6) }

func requestOf(ix *index, g int, engine map[string][]StepCost) requestView {
	gen := ix.spans[g]
	v := requestView{ID: clip(fmt.Sprint(gen.Attributes["request_id"]), maxName), Status: gen.Status.Code}
	if gen.Attributes["request_id"] == nil {
		v.ID = gen.SpanID
	}
	if gen.Status.Code == "Error" {
		v.Status = "error: " + clip(gen.Status.Message, maxTipValue)
	}
	var steps []Span
	blocks := map[int64]bool{}
	ix.descendants(g, func(j, _ int) bool {
		switch ix.spans[j].Name {
		case SpanGatewayStep:
			steps = append(steps, ix.spans[j])
			return false
		case SpanGatewayBlock:
			return true
		}
		return false
	})
	sort.SliceStable(steps, func(a, b int) bool { return steps[a].Start.Before(steps[b].Start) })
	var inSteps float64
	var unmasked, edited int64
	in := make([]stackIn, len(steps))
	for k, s := range steps {
		b := intAttr(s, "block")
		blocks[b] = true
		inSteps += s.DurationMs
		unmasked += intAttr(s, "unmasked")
		edited += intAttr(s, "edited")
		in[k] = stackIn{total: s.DurationMs, tip: fmt.Sprintf("block %d step %d: %.2f ms\nmasked before %d, unmasked %d, edited %d",
			b, intAttr(s, "step"), s.DurationMs, intAttr(s, "masked_before"), intAttr(s, "unmasked"), intAttr(s, "edited"))}
		if c, ok := matchStep(engine[s.Service], s); ok {
			in[k].parts = partsOf(c)
			in[k].tip += "\nits engine step: " + costTip(c)
			if n := intAttr(c.Step, "requests"); n > 1 {
				in[k].tip += fmt.Sprintf("\n(shared by %d requests)", n)
			}
		}
	}
	v.Summary = fmt.Sprintf("%.1f ms · %d steps in %d blocks · %.1f ms in steps, %.1f ms outside them (tokenise, queue, stream) · prompt %d tokens, gen_length %d · %d unmasked, %d edited",
		gen.DurationMs, len(steps), len(blocks), inSteps, gen.DurationMs-inSteps, intAttr(gen, "prompt_tokens"), intAttr(gen, "gen_length"), unmasked, edited)
	if len(steps) == 0 {
		return v
	}
	binned := binStacks(in, "steps")
	v.Chart = stackChart("req", binned, reqH, "step", len(steps))
	if len(binned) == len(in) {
		bw := float64(plotW) / float64(len(in))
		for lo := 0; lo < len(steps); {
			b := intAttr(steps[lo], "block")
			hi := lo
			ms := 0.0
			for hi < len(steps) && intAttr(steps[hi], "block") == b {
				ms += steps[hi].DurationMs
				hi++
			}
			v.Chart.Bands = append(v.Chart.Bands, band{X: f1(float64(labelW) + float64(lo)*bw), W: f1(float64(hi-lo) * bw),
				Label: fmt.Sprintf("b%d", b), Tip: fmt.Sprintf("block %d: %d steps, %.1f ms", b, hi-lo, ms), Odd: b%2 == 1})
			lo = hi
		}
	}
	return v
}
