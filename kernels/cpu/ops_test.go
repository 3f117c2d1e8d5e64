package cpu

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

const eps32 = 1.0 / (1 << 23)

// naiveMatMul is dst[t,n] = Σ_k x[t,k]·w[n,k] in float64, with the worst-case float32 error
// bound K·ε·Σ|x·w| of each entry.
func naiveMatMul(x, w []float32, T, K, N int) (want, bound []float64) {
	want, bound = make([]float64, T*N), make([]float64, T*N)
	for t := range T {
		for n := range N {
			var s, a float64
			for k := range K {
				p := float64(x[t*K+k]) * float64(w[n*K+k])
				s += p
				a += math.Abs(p)
			}
			want[t*N+n], bound[t*N+n] = s, 2*float64(K+1)*eps32*a+1e-30
		}
	}
	return want, bound
}

func nearBound(tb testing.TB, what string, got []float32, want, bound []float64) {
	tb.Helper()
	for i := range got {
		if d := math.Abs(float64(got[i]) - want[i]); !(d <= bound[i]) {
			tb.Fatalf("%s[%d] = %v, want %v (diff %g > bound %g)", what, i, got[i], want[i], d, bound[i])
		}
	}
}

func TestMatMul(t *testing.T) {
	shapes := []struct{ T, K, N int }{
		{1, 1, 1}, {1, 7, 3}, {2, 13, 5}, {3, 256, 17}, {5, 33, 64}, {32, 256, 512}, {70, 65, 130}, {1, 2049, 9}, {0, 4, 4}, {4, 0, 3},
	}
	for name, be := range backends() {
		for _, dt := range []kernels.DType{kernels.F32, kernels.BF16, kernels.F16} {
			for i, s := range shapes {
				t.Run(fmt.Sprintf("%s/%v/T=%d,K=%d,N=%d", name, dt, s.T, s.K, s.N), func(t *testing.T) {
					r := rng(uint64(i))
					xv := randVec(r, s.T*s.K, 1)
					wv := roundTo(dt, randVec(r, s.N*s.K, 1))
					x := tensor(t, be, kernels.F32, xv, s.T, s.K)
					w := tensor(t, be, dt, wv, s.N, s.K)
					dst := alloc(t, be, kernels.F32, s.T, s.N)
					if err := be.MatMul(dst, x, w); err != nil {
						t.Fatal(err)
					}
					want, bound := naiveMatMul(xv, wv, s.T, s.K, s.N)
					nearBound(t, "dst", down(t, be, dst), want, bound)
				})
			}
		}
	}
}

func TestEmbed(t *testing.T) {
	be := New()
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16, kernels.F16} {
		t.Run(dt.String(), func(t *testing.T) {
			V, H := 11, 7
			tab := roundTo(dt, randVec(rng(1), V*H, 2))
			ids := []int32{3, 0, 10, 3}
			dst := alloc(t, be, kernels.F32, len(ids), H)
			if err := be.Embed(dst, tensor(t, be, dt, tab, V, H), i32Tensor(t, be, ids, len(ids))); err != nil {
				t.Fatal(err)
			}
			want := make([]float64, 0, len(ids)*H)
			for _, id := range ids {
				want = append(want, f64(tab[int(id)*H:(int(id)+1)*H])...)
			}
			near(t, "dst", down(t, be, dst), want, 0, 0)
		})
	}
	t.Run("out of range", func(t *testing.T) {
		for _, id := range []int32{-1, 11} {
			err := be.Embed(alloc(t, be, kernels.F32, 1, 7), tensor(t, be, kernels.BF16, make([]float32, 77), 11, 7), i32Tensor(t, be, []int32{id}, 1))
			if !errors.Is(err, kernels.ErrShape) {
				t.Fatalf("id %d: err = %v, want ErrShape", id, err)
			}
		}
	})
}

func TestRMSNorm(t *testing.T) {
	cases := []struct {
		name       string
		rows, n    int
		dt         kernels.DType
		inPlace    bool
		multiShape bool
	}{
		{"one row", 1, 1, kernels.F32, false, false},
		{"bf16 weight", 5, 33, kernels.BF16, false, false},
		{"in place", 3, 256, kernels.BF16, true, false},
		{"per head", 6, 64, kernels.F32, true, true},
	}
	for name, be := range backends() {
		for _, c := range cases {
			t.Run(name+"/"+c.name, func(t *testing.T) {
				r := rng(3)
				xv := randVec(r, c.rows*c.n, 3)
				wv := roundTo(c.dt, randVec(r, c.n, 1))
				shape := []int{c.rows, c.n}
				if c.multiShape {
					shape = []int{c.rows / 2, 2 * c.n}
				}
				x := tensor(t, be, kernels.F32, xv, shape...)
				dst := x
				if !c.inPlace {
					dst = alloc(t, be, kernels.F32, shape...)
				}
				const eps = 1e-6
				if err := be.RMSNorm(dst, x, tensor(t, be, c.dt, wv, c.n), eps); err != nil {
					t.Fatal(err)
				}
				want := make([]float64, len(xv))
				for row := range c.rows {
					var ss float64
					for _, v := range xv[row*c.n : (row+1)*c.n] {
						ss += float64(v) * float64(v)
					}
					inv := 1 / math.Sqrt(ss/float64(c.n)+eps)
					for i := range c.n {
						want[row*c.n+i] = float64(wv[i]) * float64(xv[row*c.n+i]) * inv
					}
				}
				near(t, "dst", down(t, be, dst), want, 1e-6, 1e-5)
			})
		}
	}
}

func TestSwiGLU(t *testing.T) {
	be := New(WithWorkers(3))
	for _, s := range []struct{ T, I int }{{1, 1}, {3, 7}, {33, 128}} {
		t.Run(fmt.Sprintf("T=%d,I=%d", s.T, s.I), func(t *testing.T) {
			gv := randVec(rng(4), s.T*2*s.I, 6)
			dst := alloc(t, be, kernels.F32, s.T, s.I)
			if err := be.SwiGLU(dst, tensor(t, be, kernels.F32, gv, s.T, 2*s.I)); err != nil {
				t.Fatal(err)
			}
			want := make([]float64, s.T*s.I)
			for r := range s.T {
				for i := range s.I {
					g, u := float64(gv[r*2*s.I+i]), float64(gv[r*2*s.I+s.I+i])
					want[r*s.I+i] = g / (1 + math.Exp(-g)) * u
				}
			}
			near(t, "dst", down(t, be, dst), want, 1e-6, 1e-5)
		})
	}
}

func TestAddGatherRows(t *testing.T) {
	be := New(WithWorkers(4))
	r := rng(5)
	a, c := randVec(r, 3*5, 1), randVec(r, 3*5, 1)
	dst := tensor(t, be, kernels.F32, a, 3, 5)
	if err := be.Add(dst, tensor(t, be, kernels.F32, c, 3, 5)); err != nil {
		t.Fatal(err)
	}
	want := make([]float64, len(a))
	for i := range a {
		want[i] = float64(a[i] + c[i])
	}
	near(t, "add", down(t, be, dst), want, 0, 0)

	g := alloc(t, be, kernels.F32, 4, 5)
	if err := be.GatherRows(g, dst, i32Tensor(t, be, []int32{2, 0, 2, 1}, 4)); err != nil {
		t.Fatal(err)
	}
	var wantG []float64
	for _, i := range []int{2, 0, 2, 1} {
		wantG = append(wantG, want[i*5:(i+1)*5]...)
	}
	near(t, "gather", down(t, be, g), wantG, 0, 0)
	if err := be.GatherRows(g, dst, i32Tensor(t, be, []int32{2, 0, 3, 1}, 4)); !errors.Is(err, kernels.ErrShape) {
		t.Fatalf("gather of row 3 of 3: err = %v, want ErrShape", err)
	}
}

func TestStorage(t *testing.T) {
	be := New()
	t.Run("round trip", func(t *testing.T) {
		f := tensor(t, be, kernels.F32, []float32{1, 2, 3}, 3)
		if got := down(t, be, f); got[2] != 3 {
			t.Fatalf("download = %v", got)
		}
		u := alloc(t, be, kernels.BF16, 2)
		if err := be.Upload(u, []uint16{0x3f80, 0xc000}); err != nil {
			t.Fatal(err)
		}
		got := make([]uint16, 2)
		if err := be.Download(got, u); err != nil || got[0] != 0x3f80 || got[1] != 0xc000 {
			t.Fatalf("bf16 round trip = %x, %v", got, err)
		}
	})
	t.Run("load unaligned f32 copies", func(t *testing.T) {
		raw := make([]byte, 13)
		raw[1+3] = 0x3f
		raw[1+2] = 0x80
		tt, err := be.Load(kernels.F32, []int{3}, raw[1:])
		if err != nil {
			t.Fatal(err)
		}
		if got := down(t, be, tt); got[0] != 1 {
			t.Fatalf("loaded %v, want 1 first", got)
		}
	})
	t.Run("loaded tensor is read-only", func(t *testing.T) {
		raw := make([]byte, 8)
		w, err := be.Load(kernels.BF16, []int{2, 2}, raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := be.Upload(w, []uint16{1, 2, 3, 4}); err == nil {
			t.Fatal("upload into a loaded tensor succeeded")
		}
	})
	t.Run("load size mismatch", func(t *testing.T) {
		if _, err := be.Load(kernels.BF16, []int{3}, make([]byte, 4)); !errors.Is(err, kernels.ErrShape) {
			t.Fatalf("err = %v, want ErrShape", err)
		}
	})
	t.Run("fill random", func(t *testing.T) {
		w := alloc(t, be, kernels.BF16, 64, 8)
		if err := be.FillRandom(w, 1, 0.5); err != nil {
			t.Fatal(err)
		}
		got := make([]uint16, 64*8)
		if err := be.Download(got, w); err != nil {
			t.Fatal(err)
		}
		nonzero := 0
		for _, u := range got {
			v := kernels.BF16ToF32(u)
			if v < -0.5 || v > 0.5 {
				t.Fatalf("value %v outside [-0.5, 0.5]", v)
			}
			if v != 0 {
				nonzero++
			}
		}
		if nonzero < len(got)/2 {
			t.Fatalf("only %d of %d values non-zero", nonzero, len(got))
		}
	})
}

// TestErrors checks that bad arguments are reported as wrapped sentinel errors, never panics.
func TestErrors(t *testing.T) {
	be := New()
	x := alloc(t, be, kernels.F32, 2, 4)
	w := alloc(t, be, kernels.BF16, 3, 4)
	dst := alloc(t, be, kernels.F32, 2, 3)
	freed := alloc(t, be, kernels.F32, 2, 4)
	be.Free(freed)
	foreign := &kernels.Tensor{DType: kernels.F32, Shape: []int{2, 4}, Storage: "device pointer"}
	ids := alloc(t, be, kernels.I32, 2)
	cases := []struct {
		name string
		call func() error
		want error
	}{
		{"matmul K mismatch", func() error { return be.MatMul(dst, alloc(t, be, kernels.F32, 2, 5), w) }, kernels.ErrShape},
		{"matmul dst shape", func() error { return be.MatMul(alloc(t, be, kernels.F32, 2, 4), x, w) }, kernels.ErrShape},
		{"matmul x dtype", func() error { return be.MatMul(dst, alloc(t, be, kernels.BF16, 2, 4), w) }, kernels.ErrDType},
		{"matmul w dtype", func() error { return be.MatMul(dst, x, alloc(t, be, kernels.I32, 3, 4)) }, kernels.ErrDType},
		{"matmul freed", func() error { return be.MatMul(dst, freed, w) }, kernels.ErrFreed},
		{"matmul foreign", func() error { return be.MatMul(dst, foreign, w) }, kernels.ErrWrongOwner},
		{"matmul nil", func() error { return be.MatMul(dst, nil, w) }, kernels.ErrShape},
		{"matmul 1-D", func() error { return be.MatMul(dst, alloc(t, be, kernels.F32, 8), w) }, kernels.ErrShape},
		{"embed ids dtype", func() error { return be.Embed(x, alloc(t, be, kernels.BF16, 5, 4), alloc(t, be, kernels.F32, 2)) }, kernels.ErrDType},
		{"rmsnorm width", func() error { return be.RMSNorm(x, x, alloc(t, be, kernels.F32, 3), 1e-6) }, kernels.ErrShape},
		{"rmsnorm freed", func() error { return be.RMSNorm(freed, freed, alloc(t, be, kernels.F32, 4), 1e-6) }, kernels.ErrFreed},
		{"swiglu odd", func() error { return be.SwiGLU(alloc(t, be, kernels.F32, 2, 1), alloc(t, be, kernels.F32, 2, 3)) }, kernels.ErrShape},
		{"add shape", func() error { return be.Add(x, dst) }, kernels.ErrShape},
		{"add foreign", func() error { return be.Add(x, foreign) }, kernels.ErrWrongOwner},
		{"gather idx dtype", func() error { return be.GatherRows(x, x, alloc(t, be, kernels.F32, 2)) }, kernels.ErrDType},
		{"router topk", func() error {
			return be.Router(alloc(t, be, kernels.I32, 2, 2), alloc(t, be, kernels.F32, 2, 2), x, nil, nil, kernels.RouterParams{TopK: 3, NGroup: 2, TopKGroup: 1})
		}, kernels.ErrShape},
		{"router groups", func() error {
			return be.Router(alloc(t, be, kernels.I32, 2, 2), alloc(t, be, kernels.F32, 2, 2), x, nil, nil, kernels.RouterParams{TopK: 2, NGroup: 3, TopKGroup: 1})
		}, kernels.ErrShape},
		{"router allowed", func() error {
			return be.Router(alloc(t, be, kernels.I32, 2, 2), alloc(t, be, kernels.F32, 2, 2), x, nil, []bool{true}, kernels.RouterParams{TopK: 2, NGroup: 2, TopKGroup: 1})
		}, kernels.ErrShape},
		{"experts nil set", func() error {
			return be.ExpertsFFN(x, alloc(t, be, kernels.F32, 2, 4), alloc(t, be, kernels.I32, 2, 1), alloc(t, be, kernels.F32, 2, 1), nil)
		}, kernels.ErrShape},
		{"lmhead k>V", func() error {
			return be.LMHead(alloc(t, be, kernels.I32, 2, 4), alloc(t, be, kernels.F32, 2, 4), alloc(t, be, kernels.F32, 2), x, w, 1)
		}, kernels.ErrShape},
		{"lmhead lse shape", func() error {
			return be.LMHead(alloc(t, be, kernels.I32, 2, 1), alloc(t, be, kernels.F32, 2, 1), alloc(t, be, kernels.F32, 3), x, w, 1)
		}, kernels.ErrShape},
		{"new batch nil cache", func() error { _, err := be.NewBatch([]kernels.Seq{{Row: 0, Len: 2}}); return err }, kernels.ErrShape},
		{"upload dtype", func() error { return be.Upload(ids, []float32{1, 2}) }, kernels.ErrDType},
		{"upload size", func() error { return be.Upload(ids, []int32{1}) }, kernels.ErrShape},
		{"download freed", func() error { return be.Download(make([]float32, 8), freed) }, kernels.ErrFreed},
		{"alloc negative", func() error { _, err := be.Alloc(kernels.F32, 2, -1); return err }, kernels.ErrShape},
		{"alloc dtype", func() error { _, err := be.Alloc(kernels.DType(9), 2); return err }, kernels.ErrDType},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}
