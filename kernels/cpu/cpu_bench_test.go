package cpu

import (
	"fmt"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

func randTensor(b *testing.B, be *Backend, dt kernels.DType, seed uint64, scale float32, shape ...int) *kernels.Tensor {
	b.Helper()
	t := alloc(b, be, dt, shape...)
	if err := be.FillRandom(t, seed, scale); err != nil {
		b.Fatal(err)
	}
	return t
}

// BenchmarkMatMul runs the tiny model's shapes: qkv/dense (N=512 at K=256), dense FFN gate-up
// (N=768·2) and the LM head (N=8192), with BF16 weights, on the pure-Go kernels (kernel=go)
// and the SIMD ones (kernel=simd, where the CPU has them).
func BenchmarkMatMul(b *testing.B) {
	be := New()
	const T, K = 32, 256
	for _, kernel := range []string{"go", "simd"} {
		for _, N := range []int{512, 768 * 2, 8192} {
			b.Run(fmt.Sprintf("kernel=%s/T=%d,K=%d,N=%d", kernel, T, K, N), func(b *testing.B) {
				if kernel == "simd" {
					simdAvailable(b)
				}
				x := randTensor(b, be, kernels.F32, 1, 1, T, K)
				w := randTensor(b, be, kernels.BF16, 2, 0.1, N, K)
				dst := alloc(b, be, kernels.F32, T, N)
				withSIMD(kernel == "simd", func() {
					b.ReportAllocs()
					for b.Loop() {
						if err := be.MatMul(dst, x, w); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.ReportMetric(2*float64(T*K*N)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

func BenchmarkLMHead(b *testing.B) {
	be := New()
	const T, V, H = 32, 8192, 256
	for _, K := range []int{1, 8} {
		b.Run(fmt.Sprintf("T=%d,V=%d,H=%d,K=%d", T, V, H, K), func(b *testing.B) {
			x := randTensor(b, be, kernels.F32, 1, 1, T, H)
			w := randTensor(b, be, kernels.BF16, 2, 0.1, V, H)
			ids := alloc(b, be, kernels.I32, T, K)
			lg := alloc(b, be, kernels.F32, T, K)
			lse := alloc(b, be, kernels.F32, T)
			b.ReportAllocs()
			for b.Loop() {
				if err := be.LMHead(ids, lg, lse, x, w, 1); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(2*float64(T*V*H)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// BenchmarkAttention: 32 rows (one block) at positions 480..511 over a 512-token cache.
func BenchmarkAttention(b *testing.B) {
	be := New()
	p := kernels.AttnParams{Heads: 4, KVHeads: 2, HeadDim: 64, RotaryDim: 32, RopeTheta: 600000, Eps: 1e-6, BlockLen: 32}
	const T, capLen = 32, 512
	cache := randTensor(b, be, kernels.F32, 1, 1, 1, 2, p.KVHeads, capLen, p.HeadDim)
	qkv := randTensor(b, be, kernels.F32, 2, 1, T, p.QKVCols())
	out := alloc(b, be, kernels.F32, T, p.Heads*p.HeadDim)
	bt, err := be.NewBatch([]kernels.Seq{{Row: 0, Len: T, Pos: capLen - T, Cache: cache}})
	if err != nil {
		b.Fatal(err)
	}
	defer be.FreeBatch(bt)
	b.ReportAllocs()
	for b.Loop() {
		if err := be.Attention(out, qkv, bt, 0, p); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkExpertsFFN: the tiny model's MoE layer, 32 rows × 4 choices over 16 experts.
func BenchmarkExpertsFFN(b *testing.B) {
	be := New()
	const T, H, I, E, k = 32, 256, 128, 16, 4
	set := &kernels.ExpertSet{Experts: make([]*kernels.Expert, E)}
	for e := range E {
		set.Experts[e] = &kernels.Expert{
			GateUp: randTensor(b, be, kernels.BF16, uint64(3*e), 0.1, 2*I, H),
			Down:   randTensor(b, be, kernels.BF16, uint64(3*e+1), 0.1, H, I),
		}
	}
	x := randTensor(b, be, kernels.F32, 1, 1, T, H)
	idv := make([]int32, T*k)
	for i := range idv {
		idv[i] = int32((i*7 + i/k) % E)
	}
	ids := i32Tensor(b, be, idv, T, k)
	w := randTensor(b, be, kernels.F32, 2, 1, T, k)
	dst := alloc(b, be, kernels.F32, T, H)
	b.ReportAllocs()
	for b.Loop() {
		if err := be.ExpertsFFN(dst, x, ids, w, set); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(2*3*float64(T*k*H*I)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
