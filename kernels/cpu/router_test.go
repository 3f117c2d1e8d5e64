package cpu

import (
	"math"
	"slices"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

// logit is the inverse sigmoid, so that a test can state the scores s directly.
func logit(s float64) float32 { return float32(math.Log(s / (1 - s))) }

func logits(s ...float64) []float32 {
	out := make([]float32, len(s))
	for i, v := range s {
		out[i] = logit(v)
	}
	return out
}

func runRouter(tb testing.TB, be *Backend, lg []float32, T int, bias []float32, allowed []bool, p kernels.RouterParams) ([]int32, []float32) {
	tb.Helper()
	E := len(lg) / T
	ids := alloc(tb, be, kernels.I32, T, p.TopK)
	w := alloc(tb, be, kernels.F32, T, p.TopK)
	var bt *kernels.Tensor
	if bias != nil {
		bt = tensor(tb, be, kernels.F32, bias, E)
	}
	if err := be.Router(ids, w, tensor(tb, be, kernels.F32, lg, T, E), bt, allowed, p); err != nil {
		tb.Fatal(err)
	}
	return downI32(tb, be, ids), down(tb, be, w)
}

func TestRouterCases(t *testing.T) {
	s8 := []float64{0.9, 0.1, 0.6, 0.6, 0.8, 0.7, 0.2, 0.3} // groups of 2 score 1.0, 1.2, 1.5, 0.5
	p := kernels.RouterParams{TopK: 2, NGroup: 4, TopKGroup: 2, Norm: true, Scale: 2.5}
	cases := []struct {
		name    string
		s       []float64
		bias    []float32
		allowed []bool
		p       kernels.RouterParams
		ids     []int32
		w       []float64 // before Scale
	}{
		{name: "group limit hides the best expert", s: s8, p: p, ids: []int32{4, 5}, w: []float64{0.8 / 1.5, 0.7 / 1.5}},
		{name: "bias selects, raw score weighs", s: s8, bias: []float32{0, 1, 0, 0, 0, 0, 0, 0}, p: p,
			ids: []int32{1, 0}, w: []float64{0.1, 0.9}},
		{name: "ties go to the lower group and id", s: []float64{0.5, 0.5, 0.5, 0.5},
			p: kernels.RouterParams{TopK: 2, NGroup: 2, TopKGroup: 1, Norm: true, Scale: 1}, ids: []int32{0, 1}, w: []float64{0.5, 0.5}},
		{name: "ties across kept groups", s: []float64{0.5, 0.5, 0.5, 0.5},
			p: kernels.RouterParams{TopK: 3, NGroup: 2, TopKGroup: 2, Norm: false, Scale: 1}, ids: []int32{0, 1, 2}, w: []float64{0.5, 0.5, 0.5}},
		{name: "disallowed expert leaves its group weaker", s: s8, allowed: []bool{true, true, true, true, false, true, true, true}, p: p,
			ids: []int32{0, 2}, w: []float64{0.9 / 1.5, 0.6 / 1.5}},
		{name: "too few allowed fills -1", s: s8, allowed: []bool{false, false, false, true, false, false, true, false},
			p: kernels.RouterParams{TopK: 4, NGroup: 4, TopKGroup: 2, Norm: true, Scale: 2.5}, ids: []int32{3, 6, -1, -1}, w: []float64{0.6 / 0.8, 0.2 / 0.8, 0, 0}},
		{name: "nothing allowed", s: s8, allowed: make([]bool, 8), p: p, ids: []int32{-1, -1}, w: []float64{0, 0}},
		{name: "top-1 is not normalised", s: s8, p: kernels.RouterParams{TopK: 1, NGroup: 4, TopKGroup: 2, Norm: true, Scale: 2.5},
			ids: []int32{4}, w: []float64{0.8}},
		{name: "no norm", s: s8, p: kernels.RouterParams{TopK: 2, NGroup: 1, TopKGroup: 1, Norm: false, Scale: 2},
			ids: []int32{0, 4}, w: []float64{0.9, 0.8}},
		{name: "groups of one", s: s8, p: kernels.RouterParams{TopK: 2, NGroup: 8, TopKGroup: 3, Norm: true, Scale: 1},
			ids: []int32{0, 4}, w: []float64{0.9 / 1.7, 0.8 / 1.7}},
	}
	be := New()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ids, w := runRouter(t, be, logits(c.s...), 1, c.bias, c.allowed, c.p)
			if !equalI32(ids, c.ids) {
				t.Fatalf("ids %v, want %v", ids, c.ids)
			}
			want := make([]float64, len(c.w))
			for i, v := range c.w {
				want[i] = v * float64(c.p.Scale)
			}
			near(t, "weights", w, want, 1e-6, 1e-5)
		})
	}
}

// naiveRouter is the reference `Model.moe` routing in float64 (no allowed mask).
func naiveRouter(lg, bias []float32, p kernels.RouterParams) ([]int32, []float64) {
	E := len(lg)
	gsz := E / p.NGroup
	s, sr := make([]float64, E), make([]float64, E)
	for e, l := range lg {
		s[e] = 1 / (1 + math.Exp(-float64(l)))
		sr[e] = s[e]
		if bias != nil {
			sr[e] += float64(bias[e])
		}
	}
	type cand struct {
		i int
		v float64
	}
	desc := func(a, b cand) int {
		if a.v != b.v {
			if a.v > b.v {
				return -1
			}
			return 1
		}
		return a.i - b.i
	}
	var groups []cand
	for g := range p.NGroup {
		v := slices.Clone(sr[g*gsz : (g+1)*gsz])
		slices.Sort(v)
		slices.Reverse(v)
		groups = append(groups, cand{g, v[0] + v[min(1, gsz-1)]*float64(min(1, gsz-1))})
	}
	slices.SortFunc(groups, desc)
	var experts []cand
	for _, g := range groups[:p.TopKGroup] {
		for e := g.i * gsz; e < (g.i+1)*gsz; e++ {
			experts = append(experts, cand{e, sr[e]})
		}
	}
	slices.SortFunc(experts, desc)
	ids, w := make([]int32, p.TopK), make([]float64, p.TopK)
	var sum float64
	for j := range p.TopK {
		ids[j], w[j] = int32(experts[j].i), s[experts[j].i]
		sum += w[j]
	}
	for j := range w {
		if p.Norm && p.TopK > 1 {
			w[j] /= sum + 1e-20
		}
		w[j] *= float64(p.Scale)
	}
	return ids, w
}

func TestRouterRandom(t *testing.T) {
	ps := []struct {
		E int
		p kernels.RouterParams
	}{
		{16, kernels.RouterParams{TopK: 4, NGroup: 4, TopKGroup: 2, Norm: true, Scale: 2.5}},
		{256, kernels.RouterParams{TopK: 8, NGroup: 8, TopKGroup: 4, Norm: true, Scale: 2.5}},
		{12, kernels.RouterParams{TopK: 3, NGroup: 1, TopKGroup: 1, Norm: false, Scale: 1}},
	}
	for name, be := range backends() {
		for _, c := range ps {
			t.Run(name, func(t *testing.T) {
				r := rng(uint64(c.E))
				T := 37
				lg := randVec(r, T*c.E, 4)
				bias := randVec(r, c.E, 0.3)
				ids, w := runRouter(t, be, lg, T, bias, nil, c.p)
				for row := range T {
					wi, ww := naiveRouter(lg[row*c.E:(row+1)*c.E], bias, c.p)
					k := c.p.TopK
					if !equalI32(ids[row*k:(row+1)*k], wi) {
						t.Fatalf("row %d: ids %v, want %v", row, ids[row*k:(row+1)*k], wi)
					}
					near(t, "weights", w[row*k:(row+1)*k], ww, 1e-6, 1e-5)
				}
			})
		}
	}
}
