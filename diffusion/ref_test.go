package diffusion

import (
	"math"
	"slices"
)

// refStep is one entry of the reference trace.
type refStep struct {
	Block            int
	Unmasked, Edited []int
	Tokens           []int32
	MinMargin        float64
	HasMargin        bool
}

// refGenerate transliterates generate from shared/tools/reference/llada2_ref.py line by line,
// with the model replaced by predict (called with the window and the block bounds, returning one
// Pred per block position). It is the oracle of the differential tests. Its output is cut at
// GenLen, as the Hugging Face generate (the reference script returns the whole window).
func refGenerate(prompt []int32, p Params, maskID, eosID int32, predict func(x []int32, lo, hi int) []Pred) (out []int32, forwards int, trace []refStep) {
	thr, maxPost, block := p.TauMask, p.MaxPostSteps, p.BlockLen
	n := len(prompt)
	total := (n + p.GenLen + block - 1) / block * block
	x := append(slices.Clone(prompt), make([]int32, total-n)...)
	for i := n; i < total; i++ {
		x[i] = maskID
	}
	for b := n / block; b < total/block; b++ {
		lo, hi := b*block, (b+1)*block
		post := 0
		for {
			old := slices.Clone(x[lo:hi])
			active := make([]bool, block)
			anyActive := false
			for i, t := range old {
				active[i] = t == maskID
				anyActive = anyActive || active[i]
			}
			if !anyActive {
				post++
			}
			if post > maxPost {
				break
			}
			preds := predict(x, lo, hi)
			forwards++
			unmask := make([]bool, block)
			anyUnmask := false
			for i := range block {
				unmask[i] = active[i] && float64(preds[i].Prob) > thr
				anyUnmask = anyUnmask || unmask[i]
			}
			if anyActive && !anyUnmask { // max((cf, -i)): highest confidence, then lowest index
				j, best := -1, math.Inf(-1)
				for i := range block {
					if active[i] && (j < 0 || float64(preds[i].Prob) > best) {
						j, best = i, float64(preds[i].Prob)
					}
				}
				unmask[j] = true
			}
			edits := make([]bool, block)
			anyEdit := false
			if !p.EditOff {
				for i := range block {
					edits[i] = !active[i] && lo+i >= n && float64(preds[i].Prob) > p.TauEdit && preds[i].ID != old[i]
					anyEdit = anyEdit || edits[i]
				}
			}
			for i := range block {
				if unmask[i] || edits[i] {
					x[lo+i] = preds[i].ID
				}
			}
			st := refStep{Block: b, Tokens: slices.Clone(x[lo:hi]), HasMargin: anyActive, MinMargin: math.Inf(1)}
			for i := range block {
				if unmask[i] {
					st.Unmasked = append(st.Unmasked, lo+i)
				}
				if edits[i] {
					st.Edited = append(st.Edited, lo+i)
				}
				if active[i] {
					st.MinMargin = min(st.MinMargin, math.Abs(float64(preds[i].Prob)-thr))
				}
			}
			if !anyActive {
				st.MinMargin = 0
			}
			trace = append(trace, st)
			if !anyActive && !anyEdit {
				break
			}
		}
		if slices.Contains(x[max(lo, n):hi], eosID) {
			break
		}
	}
	rest := x[n : n+p.GenLen] // as HF's generate returns x[:, prompt_len : prompt_len+gen_length]
	if i := slices.Index(rest, eosID); i >= 0 {
		rest = rest[:i]
	}
	for _, t := range rest {
		if t != maskID {
			out = append(out, t)
		}
	}
	return out, forwards, trace
}
