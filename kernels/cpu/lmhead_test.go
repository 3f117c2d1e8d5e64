package cpu

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

func TestLMHead(t *testing.T) {
	cases := []struct {
		T, H, V, K int
		invTemp    float32
	}{
		{1, 8, 1, 1, 1},
		{1, 16, 37, 1, 1},
		{3, 33, 1000, 3, 0.5},
		{33, 64, 2500, 5, 1},
		{2, 256, 8192, 1, 2},
	}
	for name, be := range backends() {
		for ci, c := range cases {
			t.Run(fmt.Sprintf("%s/T=%d,H=%d,V=%d,K=%d", name, c.T, c.H, c.V, c.K), func(t *testing.T) {
				r := rng(uint64(20 + ci))
				xv := randVec(r, c.T*c.H, 1)
				wv := roundTo(kernels.BF16, randVec(r, c.V*c.H, 1))
				if c.V > 10 {
					// Exact ties: rows 9 and 3 are copies of row 5.
					copy(wv[9*c.H:10*c.H], wv[5*c.H:6*c.H])
					copy(wv[3*c.H:4*c.H], wv[5*c.H:6*c.H])
				}
				ids := alloc(t, be, kernels.I32, c.T, c.K)
				lg := alloc(t, be, kernels.F32, c.T, c.K)
				lse := alloc(t, be, kernels.F32, c.T)
				x := tensor(t, be, kernels.F32, xv, c.T, c.H)
				if err := be.LMHead(ids, lg, lse, x, tensor(t, be, kernels.BF16, wv, c.V, c.H), c.invTemp); err != nil {
					t.Fatal(err)
				}
				gotID, gotL, gotLSE := downI32(t, be, ids), down(t, be, lg), down(t, be, lse)
				want, bound := naiveMatMul(xv, wv, c.T, c.H, c.V)
				for row := range c.T {
					l := want[row*c.V : (row+1)*c.V]
					sorted := slices.Clone(l)
					slices.Sort(sorted)
					slices.Reverse(sorted)
					var sum float64
					for _, v := range l {
						sum += math.Exp(v * float64(c.invTemp))
					}
					near(t, "lse", gotLSE[row:row+1], []float64{math.Log(sum)}, 1e-5, 1e-5)
					for j := range c.K {
						id, v := gotID[row*c.K+j], gotL[row*c.K+j]
						if id < 0 || int(id) >= c.V {
							t.Fatalf("row %d: id %d out of range", row, id)
						}
						tol := bound[row*c.V+int(id)]
						if d := math.Abs(float64(v) - l[id]); d > tol {
							t.Fatalf("row %d: logit of %d = %v, want %v", row, id, v, l[id])
						}
						if d := math.Abs(float64(v) - sorted[j]); d > 2*tol {
							t.Fatalf("row %d: top %d = %v (id %d), want %v", row, j, v, id, sorted[j])
						}
						if j > 0 {
							pid, pv := gotID[row*c.K+j-1], gotL[row*c.K+j-1]
							if pv < v || (pv == v && pid > id) || pid == id {
								t.Fatalf("row %d: (%d, %v) before (%d, %v)", row, pid, pv, id, v)
							}
						}
					}
				}
			})
		}
	}
	t.Run("ties go to the lower id", func(t *testing.T) {
		be := New(WithWorkers(4))
		const V, H = 3000, 4
		w := make([]float32, V*H) // every logit 0 except two equal maxima at 2999 and 1500
		w[2999*H], w[1500*H] = 1, 1
		ids := alloc(t, be, kernels.I32, 1, 3)
		lg := alloc(t, be, kernels.F32, 1, 3)
		lse := alloc(t, be, kernels.F32, 1)
		if err := be.LMHead(ids, lg, lse, tensor(t, be, kernels.F32, []float32{2, 0, 0, 0}, 1, H), tensor(t, be, kernels.BF16, w, V, H), 1); err != nil {
			t.Fatal(err)
		}
		if got, want := downI32(t, be, ids), []int32{1500, 2999, 0}; !equalI32(got, want) {
			t.Fatalf("ids %v, want %v", got, want)
		}
		near(t, "lse", down(t, be, lse), []float64{math.Log(2*math.Exp(2) + V - 2)}, 1e-5, 1e-6)
	})
}
