package cpu

import (
	"errors"
	"math"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

var testAttn = kernels.AttnParams{Heads: 4, KVHeads: 2, HeadDim: 6, RotaryDim: 4, RopeTheta: 10000, Eps: 1e-6, BlockLen: 4}

func TestNewBatch(t *testing.T) {
	be := New()
	c1, err := be.NewCache(2, 8, testAttn)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{2, 2, 2, 8, 6}; !equalInts(c1.Shape, want) {
		t.Fatalf("cache shape %v, want %v", c1.Shape, want)
	}
	c2, _ := be.NewCache(2, 16, testAttn)
	t.Run("positions", func(t *testing.T) {
		b, err := be.NewBatch([]kernels.Seq{{Row: 3, Len: 2, Pos: 6, Cache: c1}, {Row: 0, Len: 3, Pos: 0, Cache: c2}})
		if err != nil {
			t.Fatal(err)
		}
		defer be.FreeBatch(b)
		if b.Rows != 5 {
			t.Fatalf("rows %d, want 5", b.Rows)
		}
		if got, want := downI32(t, be, b.Pos), []int32{0, 1, 2, 6, 7}; !equalI32(got, want) {
			t.Fatalf("pos %v, want %v", got, want)
		}
	})
	bad := map[string][]kernels.Seq{
		"gap":        {{Row: 0, Len: 2, Cache: c1}, {Row: 3, Len: 1, Cache: c2}},
		"overlap":    {{Row: 0, Len: 2, Cache: c1}, {Row: 1, Len: 1, Cache: c2}},
		"not from 0": {{Row: 1, Len: 2, Cache: c1}},
		"negative":   {{Row: 0, Len: 2, Pos: -1, Cache: c1}},
		"past cap":   {{Row: 0, Len: 3, Pos: 6, Cache: c1}},
		"nil cache":  {{Row: 0, Len: 1}},
		"bad cache":  {{Row: 0, Len: 1, Cache: alloc(t, be, kernels.F32, 2, 3)}},
	}
	for name, seqs := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := be.NewBatch(seqs); !errors.Is(err, kernels.ErrShape) {
				t.Fatalf("err = %v, want ErrShape", err)
			}
		})
	}
}

// naiveRoPE is QKNormRoPE in float64.
func naiveRoPE(qkv, qw, kw []float32, pos []int32, p kernels.AttnParams) []float64 {
	W, D, half := p.QKVCols(), p.HeadDim, p.RotaryDim/2
	out := f64(qkv)
	for t := range len(qkv) / W {
		for h := range p.Heads + p.KVHeads {
			x := out[t*W+h*D : t*W+(h+1)*D]
			w := qw
			if h >= p.Heads {
				w = kw
			}
			if w != nil {
				var ss float64
				for _, v := range x {
					ss += v * v
				}
				inv := 1 / math.Sqrt(ss/float64(D)+float64(p.Eps))
				for i := range x {
					x[i] = float64(w[i]) * x[i] * inv
				}
			}
			for i := range half {
				a := float64(pos[t]) * math.Pow(p.RopeTheta, -2*float64(i)/float64(p.RotaryDim))
				c, s := math.Cos(a), math.Sin(a)
				x1, x2 := x[i], x[half+i]
				x[i], x[half+i] = x1*c-x2*s, x2*c+x1*s
			}
		}
	}
	return out
}

func TestQKNormRoPE(t *testing.T) {
	p := testAttn
	p.HeadDim, p.RotaryDim = 8, 6
	be := New(WithWorkers(3))
	cache, _ := be.NewCache(1, 64, p)
	for _, withNorm := range []bool{true, false} {
		name := "norm"
		if !withNorm {
			name = "no norm"
		}
		t.Run(name, func(t *testing.T) {
			r := rng(6)
			T := 5
			qkvv := randVec(r, T*p.QKVCols(), 2)
			b, err := be.NewBatch([]kernels.Seq{{Row: 0, Len: 2, Pos: 40, Cache: cache}, {Row: 2, Len: 3, Pos: 0, Cache: cache}})
			if err != nil {
				t.Fatal(err)
			}
			defer be.FreeBatch(b)
			qkv := tensor(t, be, kernels.F32, qkvv, T, p.QKVCols())
			var qw, kw []float32
			var qwt, kwt *kernels.Tensor
			if withNorm {
				qw, kw = roundTo(kernels.BF16, randVec(r, p.HeadDim, 1.5)), randVec(r, p.HeadDim, 1.5)
				qwt, kwt = tensor(t, be, kernels.BF16, qw, p.HeadDim), tensor(t, be, kernels.F32, kw, p.HeadDim)
			}
			if err := be.QKNormRoPE(qkv, qwt, kwt, b, p); err != nil {
				t.Fatal(err)
			}
			want := naiveRoPE(qkvv, qw, kw, downI32(t, be, b.Pos), p)
			near(t, "qkv", down(t, be, qkv), want, 2e-5, 2e-5)
			// v heads are untouched.
			got := down(t, be, qkv)
			for r := range T {
				v0 := r*p.QKVCols() + (p.Heads+p.KVHeads)*p.HeadDim
				for i := v0; i < (r+1)*p.QKVCols(); i++ {
					if got[i] != qkvv[i] {
						t.Fatalf("v element %d changed", i)
					}
				}
			}
		})
	}
	t.Run("bad rotary dim", func(t *testing.T) {
		q := p
		q.RotaryDim = 3
		b, _ := be.NewBatch([]kernels.Seq{{Row: 0, Len: 1, Cache: cache}})
		defer be.FreeBatch(b)
		if err := be.QKNormRoPE(alloc(t, be, kernels.F32, 1, q.QKVCols()), nil, nil, b, q); !errors.Is(err, kernels.ErrShape) {
			t.Fatalf("err = %v, want ErrShape", err)
		}
	})
}

func TestRopeFreqsMatchTorch(t *testing.T) {
	// torch: 1.0 / (600000.0 ** (torch.arange(0, 32, 2).float() / 32)), float32.
	f := ropeFreqs(600000, 32)
	for i, v := range f {
		e := float32(2*i) / 32
		want := 1 / float32(math.Pow(600000, float64(e)))
		if v != want {
			t.Fatalf("inv_freq[%d] = %v, want %v", i, v, want)
		}
	}
	for i, v := range f {
		exact := math.Pow(600000, -2*float64(i)/32)
		if math.Abs(float64(v)-exact) > 2e-7*exact {
			t.Fatalf("inv_freq[%d] = %v, exact %v", i, v, exact)
		}
	}
}

func TestAttention(t *testing.T) {
	p := testAttn
	D, W, KVH, H := p.HeadDim, p.QKVCols(), p.KVHeads, p.Heads
	const layers, layer = 2, 1
	// Seq A: positions 5..7 (inside block [4,8)); seq B: positions 6..10 (blocks [4,8) and
	// [8,12)). B's rows come first in the batch.
	seqs := []struct{ row, n, pos, capLen int }{{5, 3, 5, 12}, {0, 5, 6, 16}}
	for name, be := range backends() {
		t.Run(name, func(t *testing.T) {
			r := rng(8)
			T := 8
			qkvv := randVec(r, T*W, 1.5)
			var ks []kernels.Seq
			pre := make([][]float32, len(seqs))
			for i, s := range seqs {
				pre[i] = randVec(r, layers*2*KVH*s.capLen*D, 1.5)
				c := tensor(t, be, kernels.F32, pre[i], layers, 2, KVH, s.capLen, D)
				ks = append(ks, kernels.Seq{Row: s.row, Len: s.n, Pos: s.pos, Cache: c})
			}
			b, err := be.NewBatch(ks)
			if err != nil {
				t.Fatal(err)
			}
			defer be.FreeBatch(b)
			out := alloc(t, be, kernels.F32, T, H*D)
			if err := be.Attention(out, tensor(t, be, kernels.F32, qkvv, T, W), b, layer, p); err != nil {
				t.Fatal(err)
			}
			want := make([]float64, T*H*D)
			for i, s := range seqs {
				// The expected cache: the old one with the new rows' k, v written in at layer.
				c := append([]float32(nil), pre[i]...)
				at := func(l, kv, h, pos int) int { return (((l*2+kv)*KVH+h)*s.capLen + pos) * D }
				for j := range s.n {
					row := qkvv[(s.row+j)*W:]
					for h := range KVH {
						copy(c[at(layer, 0, h, s.pos+j):], row[(H+h)*D:(H+h+1)*D])
						copy(c[at(layer, 1, h, s.pos+j):], row[(H+KVH+h)*D:(H+KVH+h+1)*D])
					}
				}
				near(t, "cache", down(t, be, ks[i].Cache), f64(c), 0, 0)
				for j := range s.n {
					pos := s.pos + j
					n := min(s.pos+s.n, (pos/p.BlockLen+1)*p.BlockLen)
					trow := s.row + j
					for h := range H {
						kvh := h / (H / KVH)
						q := qkvv[trow*W+h*D : trow*W+(h+1)*D]
						sc := make([]float64, n)
						m := math.Inf(-1)
						for key := range n {
							for d := range D {
								sc[key] += float64(q[d]) * float64(c[at(layer, 0, kvh, key)+d])
							}
							sc[key] /= math.Sqrt(float64(D))
							m = max(m, sc[key])
						}
						var sum float64
						for key := range n {
							sc[key] = math.Exp(sc[key] - m)
							sum += sc[key]
						}
						for key := range n {
							for d := range D {
								want[trow*H*D+h*D+d] += sc[key] / sum * float64(c[at(layer, 1, kvh, key)+d])
							}
						}
					}
				}
			}
			near(t, "out", down(t, be, out), want, 1e-5, 1e-5)
		})
	}
	t.Run("visibility", func(t *testing.T) {
		// One kv head whose values are one-hot by position: the output reveals which keys were
		// seen and with which weight (q = 0 gives uniform weights).
		p := kernels.AttnParams{Heads: 1, KVHeads: 1, HeadDim: 16, BlockLen: 4}
		be := New()
		cache, _ := be.NewCache(1, 16, p)
		pre := make([]float32, 2*16*16)
		for j := range 16 {
			pre[16*16+j*16+j] = 1 // v[j] = e_j
		}
		if err := be.Upload(cache, pre); err != nil {
			t.Fatal(err)
		}
		// Rows at positions 6..9: 6 and 7 see [0,8), 8 and 9 see [0,10).
		T := 4
		qkvv := make([]float32, T*3*16)
		for r := range T {
			qkvv[r*48+32+6+r] = 1 // its own v = e_pos
		}
		b, err := be.NewBatch([]kernels.Seq{{Row: 0, Len: T, Pos: 6, Cache: cache}})
		if err != nil {
			t.Fatal(err)
		}
		defer be.FreeBatch(b)
		out := alloc(t, be, kernels.F32, T, 16)
		if err := be.Attention(out, tensor(t, be, kernels.F32, qkvv, T, 48), b, 0, p); err != nil {
			t.Fatal(err)
		}
		got := down(t, be, out)
		for r, n := range []int{8, 8, 10, 10} {
			want := make([]float64, 16)
			for j := range n {
				want[j] = 1 / float64(n)
			}
			near(t, "row", got[r*16:(r+1)*16], want, 1e-7, 1e-6)
		}
	})
	t.Run("errors", func(t *testing.T) {
		be := New()
		cache, _ := be.NewCache(1, 8, p)
		b, _ := be.NewBatch([]kernels.Seq{{Row: 0, Len: 2, Cache: cache}})
		defer be.FreeBatch(b)
		qkv := alloc(t, be, kernels.F32, 2, W)
		out := alloc(t, be, kernels.F32, 2, H*D)
		if err := be.Attention(out, qkv, b, 1, p); !errors.Is(err, kernels.ErrShape) {
			t.Fatalf("layer 1 of 1: err = %v", err)
		}
		if err := be.Attention(out, alloc(t, be, kernels.F32, 3, W), b, 0, p); !errors.Is(err, kernels.ErrShape) {
			t.Fatalf("3 rows for a 2-row batch: err = %v", err)
		}
		q := p
		q.KVHeads = 3
		if err := be.Attention(out, qkv, b, 0, q); !errors.Is(err, kernels.ErrShape) {
			t.Fatalf("4 heads over 3 kv heads: err = %v", err)
		}
		be.Free(cache)
		if err := be.Attention(out, qkv, b, 0, p); !errors.Is(err, kernels.ErrFreed) {
			t.Fatalf("freed cache: err = %v", err)
		}
	})
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalI32(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
