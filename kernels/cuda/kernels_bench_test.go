package cuda

import (
	"fmt"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

// Benchmarks of each op at the LLaDA2.x-mini sizes (hidden 2048, 16 heads, 4 kv heads, head dim
// 128, 256 experts top-8, moe_intermediate 512, vocab 157184) on device-random data, for 32, 256
// and 1024 rows. gpu-us/op is device time between events (launch gaps included), the number to
// compare; ns/op is the host time per enqueue-and-finish.

var benchRows = []int{32, 256, 1024}

const (
	miniH, miniE, miniK, miniI, miniV = 2048, 256, 8, 512, 157184
)

// rnd allocates a device-random tensor.
func rnd(tb testing.TB, b *Backend, dt kernels.DType, scale float32, shape ...int) *kernels.Tensor {
	tb.Helper()
	t, err := b.Alloc(dt, shape...)
	must(tb, err)
	must(tb, b.FillRandom(t, uint64(len(shape)*7919+t.Numel()), scale))
	tb.Cleanup(func() { b.Free(t) })
	return t
}

// timeOp runs op b.N times between device events and reports gpu-us/op (and GB/s for bytes > 0).
func timeOp(b *testing.B, be *Backend, bytes float64, op func() error) {
	b.Helper()
	must(b, op()) // warm up: module JIT, cuBLAS heuristics, scratch growth
	must(b, be.Sync())
	tm, err := be.newTimer()
	must(b, err)
	defer tm.Close()
	b.ResetTimer()
	must(b, tm.Start())
	for i := 0; i < b.N; i++ {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
	must(b, tm.Stop())
	ms, err := tm.Ms()
	must(b, err)
	b.StopTimer()
	us := float64(ms) * 1000 / float64(b.N)
	b.ReportMetric(us, "gpu-us/op")
	if bytes > 0 {
		b.ReportMetric(bytes/(us*1e-6)/1e9, "GB/s")
	}
}

func BenchmarkEmbed(b *testing.B) {
	be := gpu(b)
	table := rnd(b, be, kernels.BF16, 1, miniV, miniH)
	for _, T := range benchRows {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			ids := rnd(b, be, kernels.I32, miniV, T)
			dst := rnd(b, be, kernels.F32, 1, T, miniH)
			timeOp(b, be, float64(T*miniH*6), func() error { return be.Embed(dst, table, ids) })
		})
	}
}

func BenchmarkRMSNorm(b *testing.B) {
	be := gpu(b)
	w := rnd(b, be, kernels.BF16, 1, miniH)
	for _, T := range benchRows {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			x := rnd(b, be, kernels.F32, 1, T, miniH)
			dst := rnd(b, be, kernels.F32, 1, T, miniH)
			timeOp(b, be, float64(T*miniH*8), func() error { return be.RMSNorm(dst, x, w, 1e-6) })
		})
	}
}

func BenchmarkMatMulQKV(b *testing.B) {
	be := gpu(b)
	p := miniAttn()
	w := rnd(b, be, kernels.BF16, 0.02, p.QKVCols(), miniH)
	for _, T := range benchRows {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			x := rnd(b, be, kernels.F32, 1, T, miniH)
			dst := rnd(b, be, kernels.F32, 1, T, p.QKVCols())
			timeOp(b, be, float64(w.Bytes()+x.Bytes()+dst.Bytes()), func() error { return be.MatMul(dst, x, w) })
		})
	}
}

func BenchmarkQKNormRoPE(b *testing.B) {
	be := gpu(b)
	p := miniAttn()
	qw, kw := rnd(b, be, kernels.BF16, 1, p.HeadDim), rnd(b, be, kernels.BF16, 1, p.HeadDim)
	for _, T := range benchRows {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			cache, err := be.NewCache(1, 512+T, p)
			must(b, err)
			defer be.Free(cache)
			batch, err := be.NewBatch([]kernels.Seq{{Row: 0, Len: T, Pos: 512, Cache: cache}})
			must(b, err)
			defer be.FreeBatch(batch)
			qkv := rnd(b, be, kernels.F32, 1, T, p.QKVCols())
			timeOp(b, be, float64(2*qkv.Bytes()), func() error { return be.QKNormRoPE(qkv, qw, kw, batch, p) })
		})
	}
}

// BenchmarkAttention: seqs sequences of 32 rows after a ctx-token context (8 layers' cache,
// layer 7), as in one denoising step of the mini model; kv=bf16 runs the BF16-cache path.
func BenchmarkAttention(b *testing.B) {
	be := gpu(b)
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		p := miniAttn()
		p.CacheDType = dt
		suffix := ""
		if dt == kernels.BF16 {
			suffix = "/kv=bf16"
		}
		for _, ctx := range []int{512, 4096} {
			for _, seqs := range []int{1, 8, 32} {
				b.Run(fmt.Sprintf("T=%d/ctx=%d%s", 32*seqs, ctx, suffix), func(b *testing.B) {
					var ks []kernels.Seq
					for i := 0; i < seqs; i++ {
						cache, err := be.NewCache(8, ctx+32, p)
						must(b, err)
						defer be.Free(cache)
						must(b, be.FillRandom(cache, uint64(3+i), 1))
						ks = append(ks, kernels.Seq{Row: 32 * i, Len: 32, Pos: ctx, Cache: cache})
					}
					batch, err := be.NewBatch(ks)
					must(b, err)
					defer be.FreeBatch(batch)
					qkv := rnd(b, be, kernels.F32, 1, 32*seqs, p.QKVCols())
					o := rnd(b, be, kernels.F32, 1, 32*seqs, p.Heads*p.HeadDim)
					kvBytes := float64(seqs * 2 * p.KVHeads * (ctx + 32) * p.HeadDim * dt.Size())
					timeOp(b, be, kvBytes, func() error { return be.Attention(o, qkv, batch, 7, p) })
				})
			}
		}
	}
}

func BenchmarkSwiGLU(b *testing.B) {
	be := gpu(b)
	for _, T := range benchRows {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			gu := rnd(b, be, kernels.F32, 1, T, 2*miniI)
			dst := rnd(b, be, kernels.F32, 1, T, miniI)
			timeOp(b, be, float64(gu.Bytes()+dst.Bytes()), func() error { return be.SwiGLU(dst, gu) })
		})
	}
}

func BenchmarkAdd(b *testing.B) {
	be := gpu(b)
	for _, T := range benchRows {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			x := rnd(b, be, kernels.F32, 1, T, miniH)
			dst := rnd(b, be, kernels.F32, 1, T, miniH)
			timeOp(b, be, float64(3*x.Bytes()), func() error { return be.Add(dst, x) })
		})
	}
}

func BenchmarkRouter(b *testing.B) {
	be := gpu(b)
	p := kernels.RouterParams{TopK: miniK, NGroup: 8, TopKGroup: 4, Norm: true, Scale: 2.5}
	bias := rnd(b, be, kernels.F32, 0.1, miniE)
	for _, T := range benchRows {
		b.Run(fmt.Sprintf("T=%d", T), func(b *testing.B) {
			logits := rnd(b, be, kernels.F32, 3, T, miniE)
			ids := rnd(b, be, kernels.I32, 1, T, miniK)
			w := rnd(b, be, kernels.F32, 1, T, miniK)
			timeOp(b, be, 0, func() error { return be.Router(ids, w, logits, bias, nil, p) })
		})
	}
}

// BenchmarkExpertsFFN: 256 random bf16 experts (1.6 GB), ids from the router on random logits.
// GB/s counts the weights of the experts touched, once.
func BenchmarkExpertsFFN(b *testing.B) {
	be := gpu(b)
	set := &kernels.ExpertSet{Experts: make([]*kernels.Expert, miniE)}
	for e := range set.Experts {
		set.Experts[e] = &kernels.Expert{GateUp: rnd(b, be, kernels.BF16, 0.02, 2*miniI, miniH), Down: rnd(b, be, kernels.BF16, 0.02, miniH, miniI)}
		must(b, be.FillRandom(set.Experts[e].GateUp, uint64(2*e+1), 0.02))
		must(b, be.FillRandom(set.Experts[e].Down, uint64(2*e+2), 0.02))
	}
	p := kernels.RouterParams{TopK: miniK, NGroup: 8, TopKGroup: 4, Norm: true, Scale: 2.5}
	for _, T := range benchRows {
		for _, act := range []kernels.DType{kernels.F32, kernels.BF16} {
			name := fmt.Sprintf("T=%d", T)
			if act == kernels.BF16 {
				name += "/act=bf16"
			}
			b.Run(name, func(b *testing.B) {
				set.ActDType = act
				benchExperts(b, be, set, p, T)
			})
		}
	}
}

// benchExperts times ExpertsFFN over T rows routed by the router on random logits.
func benchExperts(b *testing.B, be *Backend, set *kernels.ExpertSet, p kernels.RouterParams, T int) {
	logits := rnd(b, be, kernels.F32, 3, T, miniE)
	ids := rnd(b, be, kernels.I32, 1, T, miniK)
	w := rnd(b, be, kernels.F32, 1, T, miniK)
	must(b, be.Router(ids, w, logits, nil, nil, p))
	hid := downI32(b, be, ids)
	touched := map[int32]bool{}
	for _, id := range hid {
		touched[id] = true
	}
	b.ReportMetric(float64(len(touched)), "experts")
	x := rnd(b, be, kernels.F32, 1, T, miniH)
	dst := rnd(b, be, kernels.F32, 1, T, miniH)
	bytes := float64(len(touched) * 3 * miniI * miniH * 2)
	timeOp(b, be, bytes, func() error { return be.ExpertsFFN(dst, x, ids, w, set) })
}

func BenchmarkLMHead(b *testing.B) {
	be := gpu(b)
	w := rnd(b, be, kernels.BF16, 0.02, miniV, miniH)
	for _, T := range benchRows {
		b.Run(fmt.Sprintf("T=%d/K=1", T), func(b *testing.B) {
			x := rnd(b, be, kernels.F32, 1, T, miniH)
			ids := rnd(b, be, kernels.I32, 1, T, 1)
			lg := rnd(b, be, kernels.F32, 1, T, 1)
			lse := rnd(b, be, kernels.F32, 1, T)
			timeOp(b, be, float64(w.Bytes()), func() error { return be.LMHead(ids, lg, lse, x, w, 1) })
		})
	}
}

// BenchmarkGraphLayer replays one captured attention half-layer (norm, qkv, qk-norm+rope,
// attention, dense, add) at T=32 against eager enqueueing of the same ops.
func BenchmarkGraphLayer(b *testing.B) {
	be := gpu(b)
	p := miniAttn()
	T := 32
	cache, err := be.NewCache(1, 512+T, p)
	must(b, err)
	defer be.Free(cache)
	batch, err := be.NewBatch([]kernels.Seq{{Row: 0, Len: T, Pos: 512, Cache: cache}})
	must(b, err)
	defer be.FreeBatch(batch)
	norm, qn, kn := rnd(b, be, kernels.BF16, 1, miniH), rnd(b, be, kernels.BF16, 1, p.HeadDim), rnd(b, be, kernels.BF16, 1, p.HeadDim)
	wqkv, wo := rnd(b, be, kernels.BF16, 0.02, p.QKVCols(), miniH), rnd(b, be, kernels.BF16, 0.02, miniH, miniH)
	x, h := rnd(b, be, kernels.F32, 1, T, miniH), rnd(b, be, kernels.F32, 1, T, miniH)
	qkv, att, tmp := rnd(b, be, kernels.F32, 1, T, p.QKVCols()), rnd(b, be, kernels.F32, 1, T, miniH), rnd(b, be, kernels.F32, 1, T, miniH)
	step := func() error {
		return firstErr(be.RMSNorm(h, x, norm, 1e-6), be.MatMul(qkv, h, wqkv), be.QKNormRoPE(qkv, qn, kn, batch, p),
			be.Attention(att, qkv, batch, 0, p), be.MatMul(tmp, att, wo), be.Add(x, tmp))
	}
	b.Run("eager", func(b *testing.B) { timeOp(b, be, 0, step) })
	g, err := be.Capture(step)
	must(b, err)
	defer g.Close()
	b.Run("graph", func(b *testing.B) { timeOp(b, be, 0, g.Launch) })
}
