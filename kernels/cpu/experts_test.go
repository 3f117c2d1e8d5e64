package cpu

import (
	"fmt"
	"math"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

func TestExpertsFFN(t *testing.T) {
	cases := []struct {
		T, H, I, E, k int
		held          func(e int) bool
	}{
		{1, 8, 4, 4, 2, func(int) bool { return true }},
		{7, 33, 5, 6, 3, func(e int) bool { return e%2 == 0 }},
		{70, 64, 24, 16, 4, func(e int) bool { return e < 12 }}, // > expertRows rows for some experts
	}
	for name, be := range backends() {
		for ci, c := range cases {
			t.Run(fmt.Sprintf("%s/T=%d,H=%d,I=%d,E=%d,k=%d", name, c.T, c.H, c.I, c.E, c.k), func(t *testing.T) {
				r := rng(uint64(10 + ci))
				xv := randVec(r, c.T*c.H, 1)
				gus, downs := make([][]float32, c.E), make([][]float32, c.E)
				set := &kernels.ExpertSet{Experts: make([]*kernels.Expert, c.E)}
				for e := range c.E {
					gus[e] = roundTo(kernels.BF16, randVec(r, 2*c.I*c.H, 0.5))
					downs[e] = roundTo(kernels.BF16, randVec(r, c.H*c.I, 0.5))
					if c.held(e) {
						set.Experts[e] = &kernels.Expert{
							GateUp: tensor(t, be, kernels.BF16, gus[e], 2*c.I, c.H),
							Down:   tensor(t, be, kernels.BF16, downs[e], c.H, c.I),
						}
					}
				}
				ids := make([]int32, c.T*c.k)
				for i := range ids {
					ids[i] = int32(r.IntN(c.E+1)) - 1 // some -1
				}
				if c.T > 1 {
					ids[c.k] = ids[0] // a row choosing the same expert as another
				}
				wv := randVec(r, c.T*c.k, 1)
				dst := tensor(t, be, kernels.F32, randVec(r, c.T*c.H, 9), c.T, c.H) // overwritten
				err := be.ExpertsFFN(dst, tensor(t, be, kernels.F32, xv, c.T, c.H), i32Tensor(t, be, ids, c.T, c.k), tensor(t, be, kernels.F32, wv, c.T, c.k), set)
				if err != nil {
					t.Fatal(err)
				}
				want := make([]float64, c.T*c.H)
				for row := range c.T {
					x := xv[row*c.H : (row+1)*c.H]
					for j := range c.k {
						e := int(ids[row*c.k+j])
						if e < 0 || !c.held(e) {
							continue
						}
						act := make([]float64, c.I)
						for i := range c.I {
							var g, u float64
							for h := range c.H {
								g += float64(gus[e][i*c.H+h]) * float64(x[h])
								u += float64(gus[e][(c.I+i)*c.H+h]) * float64(x[h])
							}
							act[i] = g / (1 + math.Exp(-g)) * u
						}
						for h := range c.H {
							var y float64
							for i := range c.I {
								y += float64(downs[e][h*c.I+i]) * act[i]
							}
							want[row*c.H+h] += float64(wv[row*c.k+j]) * y
						}
					}
				}
				near(t, "dst", down(t, be, dst), want, 1e-5, 1e-4)
			})
		}
	}
}
