package cpu

import (
	"fmt"
	"math"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

// withSIMD runs f with the SIMD kernels switched on or off (tests in this package are not
// parallel, so flipping the switch is safe).
func withSIMD(on bool, f func()) {
	old := useSIMD
	useSIMD = on
	defer func() { useSIMD = old }()
	f()
}

func simdAvailable(tb testing.TB) {
	tb.Helper()
	if !useSIMD {
		tb.Skip("no SIMD kernels on this CPU (or DLMESH_CPU_NOSIMD=1)")
	}
}

// simdKs are the lengths the kernel tests cover: below 8, odd, multiples of 8 and large.
var simdKs = []int{1, 3, 7, 8, 9, 15, 16, 17, 31, 64, 65, 255, 256, 1000, 2049, 4096}

// TestSIMDDotMatchesGo compares every SIMD dot kernel against the pure-Go one (within a bound
// on the rounding of the two summation orders), and checks that all SIMD kernels give the
// same bits for the same dot product, as the tiling-independence of matmul requires.
func TestSIMDDotMatchesGo(t *testing.T) {
	simdAvailable(t)
	for _, K := range simdKs {
		t.Run(fmt.Sprintf("K=%d", K), func(t *testing.T) {
			r := rng(uint64(K))
			// Offset the rows by one float so the loads are not 32-byte aligned.
			buf := randVec(r, 1+6*K, 1)
			u, v := buf[1:1+K], buf[1+K:1+2*K]
			ws := [4][]float32{buf[1+2*K : 1+3*K], buf[1+3*K : 1+4*K], buf[1+4*K : 1+5*K], buf[1+5*K : 1+6*K]}
			bound := func(a, b []float32) float64 {
				var s float64
				for k := range a {
					s += math.Abs(float64(a[k]) * float64(b[k]))
				}
				return 2 * float64(K) * 0x1p-24 * s
			}
			check := func(what string, got float32, a, b []float32) {
				t.Helper()
				want := dotGo(a, b)
				if d := math.Abs(float64(got) - float64(want)); d > bound(a, b) {
					t.Fatalf("%s = %v, Go kernel %v (diff %g > %g)", what, got, want, d, bound(a, b))
				}
				if ref := dot(a, b); math.Float32bits(ref) != math.Float32bits(got) {
					t.Fatalf("%s = %v, but dot gives %v: kernels disagree", what, got, ref)
				}
			}
			a0, a1, a2, c0, c1, c2 := dot2x3(u, v, ws[0], ws[1], ws[2])
			check("dot2x3 a0", a0, u, ws[0])
			check("dot2x3 a1", a1, u, ws[1])
			check("dot2x3 a2", a2, u, ws[2])
			check("dot2x3 c0", c0, v, ws[0])
			check("dot2x3 c1", c1, v, ws[1])
			check("dot2x3 c2", c2, v, ws[2])
			e0, e1, e2, e3 := dot1x4(u, ws[0], ws[1], ws[2], ws[3])
			check("dot1x4 a0", e0, u, ws[0])
			check("dot1x4 a1", e1, u, ws[1])
			check("dot1x4 a2", e2, u, ws[2])
			check("dot1x4 a3", e3, u, ws[3])
			f0, f1 := dot2x1(u, v, ws[3])
			check("dot2x1 a", f0, u, ws[3])
			check("dot2x1 c", f1, v, ws[3])
			// The exact value of a short sum: the SIMD path must reduce its lanes correctly.
			if K <= 16 {
				var want float64
				for k := range u {
					want += float64(u[k]) * float64(ws[0][k])
				}
				if d := math.Abs(float64(dot(u, ws[0])) - want); d > bound(u, ws[0]) {
					t.Fatalf("dot = %v, float64 sum %v", dot(u, ws[0]), want)
				}
			}
		})
	}
}

// TestSIMDGemmTileMatchesGo runs gemmTile with both kernel sets on tiles that exercise every
// micro-kernel (odd T, nb not a multiple of 3 or 4).
func TestSIMDGemmTileMatchesGo(t *testing.T) {
	simdAvailable(t)
	for _, K := range simdKs {
		for _, s := range []struct{ T, nb int }{{1, 7}, {2, 5}, {5, 9}, {4, 1}} {
			r := rng(uint64(K*100 + s.T))
			x, wt := randVec(r, s.T*K, 1), randVec(r, s.nb*K, 1)
			got, want := make([]float32, s.T*s.nb), make([]float32, s.T*s.nb)
			gemmTile(got, s.nb, 0, x, s.T, K, wt, s.nb)
			withSIMD(false, func() { gemmTile(want, s.nb, 0, x, s.T, K, wt, s.nb) })
			for i := range got {
				tt, j := i/s.nb, i%s.nb
				if d := math.Abs(float64(got[i] - want[i])); d > 2*float64(K)*0x1p-24*float64(K) {
					t.Fatalf("K=%d T=%d nb=%d [%d,%d]: %v, Go kernel %v", K, s.T, s.nb, tt, j, got[i], want[i])
				}
				if ref := dot(x[tt*K:(tt+1)*K], wt[j*K:(j+1)*K]); math.Float32bits(ref) != math.Float32bits(got[i]) {
					t.Fatalf("K=%d T=%d nb=%d [%d,%d]: %v, but dot gives %v", K, s.T, s.nb, tt, j, got[i], ref)
				}
			}
		}
	}
}

// TestSIMDWiden checks the BF16 widening against the Go loop, at odd lengths and alignments.
func TestSIMDWiden(t *testing.T) {
	simdAvailable(t)
	r := rng(3)
	for _, n := range []int{1, 7, 8, 9, 33, 1024} {
		for _, off := range []int{0, 1} {
			raw := make([]byte, off+2*n)
			for i := range raw {
				raw[i] = byte(r.Uint32())
			}
			src := raw[off:]
			got, want := make([]float32, n), make([]float32, n)
			widen(kernels.BF16, got, src)
			withSIMD(false, func() { widen(kernels.BF16, want, src) })
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("n=%d off=%d [%d]: %08x, want %08x", n, off, i, math.Float32bits(got[i]), math.Float32bits(want[i]))
				}
			}
		}
	}
}

// TestSIMDMatMulTilingIndependent checks that MatMul gives the same bits serially and with
// many workers (different tile sizes) with the SIMD kernels.
func TestSIMDMatMulTilingIndependent(t *testing.T) {
	simdAvailable(t)
	const T, K, N = 7, 61, 200
	r := rng(9)
	xv, wv := randVec(r, T*K, 1), roundTo(kernels.BF16, randVec(r, N*K, 1))
	var outs [][]float32
	for _, be := range []*Backend{New(WithWorkers(1)), New(WithWorkers(7))} {
		x := tensor(t, be, kernels.F32, xv, T, K)
		w := tensor(t, be, kernels.BF16, wv, N, K)
		dst := alloc(t, be, kernels.F32, T, N)
		if err := be.MatMul(dst, x, w); err != nil {
			t.Fatal(err)
		}
		outs = append(outs, down(t, be, dst))
	}
	for i := range outs[0] {
		if math.Float32bits(outs[0][i]) != math.Float32bits(outs[1][i]) {
			t.Fatalf("[%d]: %v serially, %v with 7 workers", i, outs[0][i], outs[1][i])
		}
	}
}

// TestSIMDAccumRows compares the SIMD weighted row sum of attention against the Go loop.
func TestSIMDAccumRows(t *testing.T) {
	simdAvailable(t)
	for _, D := range []int{1, 7, 8, 13, 64, 100} {
		for _, n := range []int{1, 3, 64} {
			r := rng(uint64(D*1000 + n))
			ld := D + 3
			rows, w := randVec(r, n*ld, 1), randVec(r, n, 1)
			got, want := randVec(r, D, 1), make([]float32, D)
			copy(want, got)
			accumRows(got, rows, w, ld)
			withSIMD(false, func() { accumRows(want, rows, w, ld) })
			for d := range got {
				if diff := math.Abs(float64(got[d] - want[d])); diff > float64(n+1)*0x1p-22 {
					t.Fatalf("D=%d n=%d [%d]: %v, Go loop %v", D, n, d, got[d], want[d])
				}
			}
		}
	}
}
