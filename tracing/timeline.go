package tracing

import (
	"fmt"
	"sort"
	"strconv"
)

// buildTimeline draws one row per step (every step, or the slowest maxSteps): the step span and
// every span below it, one band of lanes per depth, overlapping spans of a depth (the fan-out
// to expert groups and replicas) on lanes of their own, and each micro-batch with everything
// below it in a band of its own (the ping-pong: one's fan-outs beside the other's attention). x is the time since the
// step's start, on one scale for every row, so widths compare across rows.
func buildTimeline(ix *index, costs []StepCost, maxSteps int) timeline {
	roots := ix.steps()
	order := make([]int, len(roots))
	for k := range order {
		order[k] = k
	}
	tl := timeline{W: labelW + plotW}
	if len(order) > maxSteps {
		sort.SliceStable(order, func(a, b int) bool {
			return ix.spans[roots[order[a]]].DurationMs > ix.spans[roots[order[b]]].DurationMs
		})
		order = order[:maxSteps]
		tl.Note = fmt.Sprintf("The %d slowest of %d steps, slowest first.", maxSteps, len(roots))
	} else {
		tl.Note = fmt.Sprintf("All %d steps, in start order.", len(roots))
	}
	type item struct{ j, depth int }
	rows := make([][]item, len(order))
	dropped := make([]int, len(order))
	extent := 0.0
	for r, k := range order {
		i := roots[k]
		items := []item{{i, 0}}
		ix.descendants(i, func(j, d int) bool {
			items = append(items, item{j, d})
			return true
		})
		if len(items) > maxBarsPerStep {
			rest := items[1:]
			sort.SliceStable(rest, func(a, b int) bool { return ix.spans[rest[a].j].DurationMs > ix.spans[rest[b].j].DurationMs })
			dropped[r] = len(items) - maxBarsPerStep
			items = items[:maxBarsPerStep]
		}
		for _, it := range items {
			extent = max(extent, relMs(ix.spans[i], ix.spans[it.j])[1])
		}
		rows[r] = items
	}
	xmax, ticks := niceAxis(extent)
	scale := float64(plotW) / xmax
	tl.PxPerMs = strconv.FormatFloat(scale, 'g', 8, 64)
	for _, t := range ticks {
		v, _ := strconv.ParseFloat(t.Pos, 64)
		tl.Ticks = append(tl.Ticks, tick{Pos: f1(float64(labelW) + v*scale), Label: t.Label})
	}
	y := float64(topPad + 8)
	tl.AxisY = f1(y - 6)
	for r, items := range rows {
		root := ix.spans[roots[order[r]]]
		// Lanes: one band for the spans outside any micro-batch, then one band per attnd.microbatch
		// span (itself and everything below it, in micro-batch start order), so that one
		// micro-batch's expert fan-outs line up against the other's attention; within a band,
		// per depth, first-fit by start time.
		band := map[int]int{} // span index → its micro-batch span index, -1 for none
		var mbs []int
		for _, it := range items {
			b := -1
			if ix.spans[it.j].Name == SpanAttndMicrobatch {
				b = it.j
				mbs = append(mbs, it.j)
			} else if a := ix.ancestor(it.j, SpanAttndMicrobatch); a >= 0 {
				b = a
			}
			band[it.j] = b
		}
		sort.SliceStable(mbs, func(a, b int) bool { return ix.spans[mbs[a]].Start.Before(ix.spans[mbs[b]].Start) })
		lane := map[int]int{} // span index → lane within the row
		offset := 0
		for _, b := range append([]int{-1}, mbs...) {
			byDepth := map[int][]item{}
			maxD := -1
			for _, it := range items {
				if band[it.j] == b {
					byDepth[it.depth] = append(byDepth[it.depth], it)
					maxD = max(maxD, it.depth)
				}
			}
			for d := 0; d <= maxD; d++ {
				its := byDepth[d]
				sort.SliceStable(its, func(a, b int) bool { return ix.spans[its[a].j].Start.Before(ix.spans[its[b].j].Start) })
				var ends []float64
				for _, it := range its {
					iv := relMs(root, ix.spans[it.j])
					l := 0
					for l < len(ends) && ends[l] > iv[0] {
						l++
					}
					if l == len(ends) {
						ends = append(ends, 0)
					}
					ends[l] = iv[1]
					lane[it.j] = offset + l
				}
				offset += len(ends)
			}
		}
		h := float64(offset*(laneH+laneGap) - laneGap)
		c := costs[order[r]]
		row := timelineRow{Y: f1(y), Mid: f1(y + min(h, 12)/2 + 4), H: f1(h),
			Label: fmt.Sprintf("#%d  %.2f ms", order[r]+1, root.DurationMs),
			Tip:   fmt.Sprintf("step %d (%s)\n%s", order[r]+1, root.Name, costTip(c))}
		if dropped[r] > 0 {
			row.Tip += fmt.Sprintf("\n%d shorter spans not drawn", dropped[r])
		}
		for _, it := range items {
			s := ix.spans[it.j]
			iv := relMs(root, s)
			x := max(iv[0], 0)
			cls := spanClass(s)
			if s.Status.Code == "Error" {
				cls += " err"
			}
			row.Bars = append(row.Bars, spanBar{Class: cls, X: f2(float64(labelW) + x*scale),
				Y: f1(y + float64(lane[it.j]*(laneH+laneGap))), W: f2(max(iv[1]-x, 0) * scale), H: strconv.Itoa(laneH), Tip: spanTip(s)})
		}
		tl.Rows = append(tl.Rows, row)
		y += h + rowGap
	}
	tl.H = int(y) + 4
	return tl
}
