package cpu

import (
	"fmt"
	"math"

	"github.com/dlmesh/dlmesh/kernels"
)

// Router implements kernels.Backend, mirroring the reference `Model.moe` in float32:
//
//	s  = sigmoid(logits); sr = s + bias
//	group score = Σ top-min(2, E/NGroup) of sr within the group
//	keep the TopKGroup best groups (ties to the lower group), choose the TopK best sr among
//	their experts (descending, ties to the lower id)
//	w = s[chosen]; w /= Σw + 1e-20 when Norm and TopK > 1; w *= Scale
//
// NGroup ≤ 0 means 1 group; TopKGroup ≤ 0 or > NGroup keeps every group. An expert with
// allowed[e] false is left out of the group scores and the choice; a group with no allowed
// expert is never kept. When fewer than TopK experts are selectable the remaining slots get id
// -1 and weight 0.
func (b *Backend) Router(ids, weights, logits, bias *kernels.Tensor, allowed []bool, p kernels.RouterParams) error {
	const op = "cpu: router"
	if err := kernels.CheckShape(op, "logits", logits, -1, -1); err != nil {
		return err
	}
	T, E := logits.Shape[0], logits.Shape[1]
	if p.TopK <= 0 {
		return fmt.Errorf("%s: top-k %d must be positive: %w", op, p.TopK, kernels.ErrShape)
	}
	ng := max(p.NGroup, 1)
	if E == 0 || E%ng != 0 {
		return fmt.Errorf("%s: %d experts do not split into %d groups: %w", op, E, ng, kernels.ErrShape)
	}
	tg := p.TopKGroup
	if tg <= 0 || tg > ng {
		tg = ng
	}
	if err := kernels.CheckShape(op, "ids", ids, T, p.TopK); err != nil {
		return err
	}
	if err := kernels.CheckShape(op, "weights", weights, T, p.TopK); err != nil {
		return err
	}
	if allowed != nil && len(allowed) != E {
		return fmt.Errorf("%s: allowed has %d entries, want %d experts: %w", op, len(allowed), E, kernels.ErrShape)
	}
	lg, err := b.f32(op, "logits", logits)
	if err != nil {
		return err
	}
	var bs []float32
	if bias != nil {
		if err := kernels.CheckShape(op, "bias", bias, E); err != nil {
			return err
		}
		if bs, err = b.f32(op, "bias", bias); err != nil {
			return err
		}
	}
	id, err := b.i32w(op, "ids", ids)
	if err != nil {
		return err
	}
	wt, err := b.f32w(op, "weights", weights)
	if err != nil {
		return err
	}
	r := router{E: E, ng: ng, tg: tg, k: p.TopK, bias: bs, allowed: allowed, norm: p.Norm, scale: p.Scale}
	b.parallelRange(T, max(1, 4096/E), func(lo, hi int) {
		sc := r.scratch()
		for t := lo; t < hi; t++ {
			r.route(id[t*r.k:(t+1)*r.k], wt[t*r.k:(t+1)*r.k], lg[t*E:(t+1)*E], sc)
		}
	})
	return nil
}

type router struct {
	E, ng, tg, k int
	bias         []float32
	allowed      []bool
	norm         bool
	scale        float32
}

type routerScratch struct {
	s, sr, gs []float32
	keep      []bool
}

func (r *router) scratch() *routerScratch {
	return &routerScratch{s: make([]float32, r.E), sr: make([]float32, r.E), gs: make([]float32, r.ng), keep: make([]bool, r.ng)}
}

// route chooses the experts of one row.
func (r *router) route(ids []int32, w []float32, logits []float32, sc *routerScratch) {
	E, gsz := r.E, r.E/r.ng
	negInf := float32(math.Inf(-1))
	for e, l := range logits {
		s := float32(1 / (1 + math.Exp(-float64(l))))
		sc.s[e] = s
		sr := s
		if r.bias != nil {
			sr = s + r.bias[e]
		}
		if r.allowed != nil && !r.allowed[e] {
			sr = negInf
		}
		sc.sr[e] = sr
	}
	// Group scores: the sum of the group's top-min(2, gsz) selectable sr.
	top := min(2, gsz)
	for g := range r.ng {
		a, c := negInf, negInf // best, second best
		n := 0
		for _, v := range sc.sr[g*gsz : (g+1)*gsz] {
			if v == negInf || v != v {
				continue
			}
			n++
			if v > a {
				a, c = v, a
			} else if v > c {
				c = v
			}
		}
		switch {
		case n == 0:
			sc.gs[g] = negInf
		case top == 1 || n == 1:
			sc.gs[g] = a
		default:
			sc.gs[g] = a + c
		}
		sc.keep[g] = false
	}
	// Keep the tg best groups (ties to the lower index), never a group with nothing selectable.
	for range r.tg {
		best := -1
		for g, v := range sc.gs {
			if sc.keep[g] || v == negInf {
				continue
			}
			if best < 0 || v > sc.gs[best] {
				best = g
			}
		}
		if best < 0 {
			break
		}
		sc.keep[best] = true
	}
	// Top-k experts by sr among the kept groups, descending, ties to the lower id.
	for j := range ids {
		ids[j], w[j] = -1, 0
	}
	n := 0
	for e := range E {
		v := sc.sr[e]
		if !sc.keep[e/gsz] || v == negInf || v != v {
			continue
		}
		if n == r.k && !(v > sc.sr[ids[n-1]]) {
			continue
		}
		// Insert e after every kept entry with sr ≥ v (earlier ids win ties).
		i := min(n, r.k-1)
		for i > 0 && sc.sr[ids[i-1]] < v {
			ids[i] = ids[i-1]
			i--
		}
		ids[i] = int32(e)
		n = min(n+1, r.k)
	}
	var sum float32
	for j := range n {
		w[j] = sc.s[ids[j]]
		sum += w[j]
	}
	for j := range n {
		if r.norm && r.k > 1 {
			w[j] /= sum + 1e-20
		}
		w[j] *= r.scale
	}
}
