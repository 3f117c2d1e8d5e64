package cuda

import (
	"fmt"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

// Ops with one kernel each. Every op validates on the calling goroutine's behalf inside the
// context thread (tensor ownership is thread state), then enqueues; errors are argument errors
// or the launch's CUresult.

func gridFor(n, per int) dim3 { return grid1(max(1, min((n+per-1)/per, 8*65535))) }

// Embed implements kernels.Backend.
func (b *Backend) Embed(dst, table, ids *kernels.Tensor) error {
	const op = "embed"
	return b.do(func() error {
		if err := b.own(op, dst, table, ids); err != nil {
			return err
		}
		if err := firstErr(kernels.CheckDType(op, "dst", dst, kernels.F32), kernels.CheckDType(op, "table", table, kernels.F32, kernels.BF16, kernels.F16),
			kernels.CheckDType(op, "ids", ids, kernels.I32), kernels.CheckShape(op, "table", table, -1, -1)); err != nil {
			return err
		}
		T, H := ids.Numel(), table.Shape[1]
		if err := kernels.CheckShape(op, "dst", dst, T, H); err != nil {
			return err
		}
		a := b.args.reset().ptr(ptrOf(dst)).ptr(ptrOf(table)).i32(int(table.DType)).ptr(ptrOf(ids)).i32(T).i32(H).i32(table.Shape[0])
		return b.launch("embed", grid1(T), dim3{256, 1, 1}, 0, a)
	})
}

// RMSNorm implements kernels.Backend.
func (b *Backend) RMSNorm(dst, x, w *kernels.Tensor, eps float32) error {
	const op = "rmsnorm"
	return b.do(func() error {
		if err := b.own(op, dst, x, w); err != nil {
			return err
		}
		if err := firstErr(kernels.CheckDType(op, "dst", dst, kernels.F32), kernels.CheckDType(op, "x", x, kernels.F32),
			kernels.CheckDType(op, "w", w, kernels.F32, kernels.BF16, kernels.F16)); err != nil {
			return err
		}
		n := w.Numel()
		if n == 0 || x.Numel()%n != 0 || dst.Numel() != x.Numel() {
			return fmt.Errorf("%s: x %v, dst %v, w %v: %w", op, x, dst, w, kernels.ErrShape)
		}
		rows := x.Numel() / n
		a := b.args.reset().ptr(ptrOf(dst)).ptr(ptrOf(x)).ptr(ptrOf(w)).i32(int(w.DType)).i32(n).f32(eps)
		return b.launch("rmsnorm", grid1(rows), dim3{uint32(threadsFor(n, 256)), 1, 1}, 0, a)
	})
}

// threadsFor picks a block size: n rounded up to a warp, at most limit.
func threadsFor(n, limit int) int { return min(limit, max(32, (n+31)/32*32)) }

// QKNormRoPE implements kernels.Backend.
func (b *Backend) QKNormRoPE(qkv, qw, kw *kernels.Tensor, batch *kernels.Batch, p kernels.AttnParams) error {
	const op = "qknorm rope"
	return b.do(func() error {
		if err := b.own(op, qkv); err != nil {
			return err
		}
		norm := qw != nil && kw != nil
		wdt := kernels.F32
		if norm {
			if err := firstErr(b.own(op, qw, kw), kernels.CheckShape(op, "qw", qw, p.HeadDim), kernels.CheckShape(op, "kw", kw, p.HeadDim)); err != nil {
				return err
			}
			if qw.DType != kw.DType {
				return fmt.Errorf("%s: qw %v and kw %v: %w", op, qw, kw, kernels.ErrDType)
			}
			wdt = qw.DType
		}
		bd, err := b.batchDev(op, batch)
		if err != nil {
			return err
		}
		if err := firstErr(kernels.CheckDType(op, "qkv", qkv, kernels.F32), kernels.CheckShape(op, "qkv", qkv, batch.Rows, p.QKVCols())); err != nil {
			return err
		}
		if p.HeadDim > 1024 || p.HeadDim%32 != 0 || p.RotaryDim%2 != 0 || p.RotaryDim > p.HeadDim {
			return fmt.Errorf("%s: head dim %d, rotary dim %d: %w", op, p.HeadDim, p.RotaryDim, kernels.ErrUnsupported)
		}
		n := 0
		if norm {
			n = 1
		}
		a := b.args.reset().ptr(ptrOf(qkv)).ptr(ptrOf(qw)).ptr(ptrOf(kw)).i32(int(wdt)).ptr(bd.pos).i32(p.Heads).i32(p.KVHeads).
			i32(p.HeadDim).i32(p.RotaryDim).f32(float32(p.RopeTheta)).f32(p.Eps).i32(n)
		return b.launch("qknorm_rope", dim3{uint32(batch.Rows), uint32(p.Heads + p.KVHeads), 1}, dim3{uint32(p.HeadDim), 1, 1}, 0, a)
	})
}

// SwiGLU implements kernels.Backend.
func (b *Backend) SwiGLU(dst, gu *kernels.Tensor) error {
	const op = "swiglu"
	return b.do(func() error {
		if err := firstErr(b.own(op, dst, gu), kernels.CheckDType(op, "dst", dst, kernels.F32), kernels.CheckDType(op, "gu", gu, kernels.F32)); err != nil {
			return err
		}
		T, I := dst.Rows(), dst.Cols()
		if err := kernels.CheckShape(op, "gu", gu, T, 2*I); err != nil {
			return err
		}
		a := b.args.reset().ptr(ptrOf(dst)).ptr(ptrOf(gu)).i32(T).i32(I)
		return b.launch("swiglu", gridFor(T*I, 256), dim3{256, 1, 1}, 0, a)
	})
}

// Add implements kernels.Backend.
func (b *Backend) Add(dst, x *kernels.Tensor) error {
	const op = "add"
	return b.do(func() error {
		if err := firstErr(b.own(op, dst, x), kernels.CheckDType(op, "dst", dst, kernels.F32), kernels.CheckDType(op, "x", x, kernels.F32)); err != nil {
			return err
		}
		if dst.Numel() != x.Numel() {
			return fmt.Errorf("%s: dst %v, x %v: %w", op, dst, x, kernels.ErrShape)
		}
		n := dst.Numel()
		a := b.args.reset().ptr(ptrOf(dst)).ptr(ptrOf(x)).u64(uint64(n))
		return b.launch("add", gridFor(n, 256), dim3{256, 1, 1}, 0, a)
	})
}

// GatherRows implements kernels.Backend.
func (b *Backend) GatherRows(dst, src, idx *kernels.Tensor) error {
	const op = "gather rows"
	return b.do(func() error {
		if err := firstErr(b.own(op, dst, src, idx), kernels.CheckDType(op, "idx", idx, kernels.I32)); err != nil {
			return err
		}
		n := idx.Numel()
		if dst.DType != src.DType || dst.Cols() != src.Cols() || dst.Rows() != n {
			return fmt.Errorf("%s: dst %v, src %v, idx %v: %w", op, dst, src, idx, kernels.ErrShape)
		}
		words := src.Cols() * src.DType.Size() / 2
		a := b.args.reset().ptr(ptrOf(dst)).ptr(ptrOf(src)).ptr(ptrOf(idx)).i32(words).i32(src.Rows())
		return b.launch("gather_rows", grid1(n), dim3{uint32(threadsFor(words, 256)), 1, 1}, 0, a)
	})
}

// MatMul implements kernels.Backend with cublasGemmEx: F32 weights in pure fp32; BF16/F16
// weights with x rounded to the weight type first, fp32 accumulation and output.
func (b *Backend) MatMul(dst, x, w *kernels.Tensor) error {
	const op = "matmul"
	return b.do(func() error {
		if err := firstErr(b.own(op, dst, x, w), kernels.CheckDType(op, "dst", dst, kernels.F32), kernels.CheckDType(op, "x", x, kernels.F32),
			kernels.CheckDType(op, "w", w, kernels.F32, kernels.BF16, kernels.F16), kernels.CheckShape(op, "w", w, -1, -1)); err != nil {
			return err
		}
		N, K := w.Shape[0], w.Shape[1]
		T := x.Rows()
		if x.Cols() != K || dst.Rows() != T || dst.Cols() != N {
			return fmt.Errorf("%s: dst %v = x %v · w %vᵀ: %w", op, dst, x, w, kernels.ErrShape)
		}
		return b.gemm(ptrOf(dst), ptrOf(x), ptrOf(w), w.DType, T, N, K, N)
	})
}

// gemm: C[t, n] (row stride ldc) = Σ_k x[t,k]·w[n,k] for t < T, n < N (thread only).
func (b *Backend) gemm(c, x, w uintptr, wdt kernels.DType, T, N, K, ldc int) error {
	if b.blas == nil {
		return fmt.Errorf("cuda: matmul: cuBLAS not loaded: %w", kernels.ErrUnsupported)
	}
	if T == 0 || N == 0 {
		return nil
	}
	xt, ct := int32(cudaR32F), int32(cudaR32F)
	wt := int32(cudaR32F)
	xin := x
	if wdt == kernels.BF16 || wdt == kernels.F16 {
		wt = cudaR16BF
		if wdt == kernels.F16 {
			wt = cudaR16F
		}
		xt = wt
		s, err := b.scratchBuf("matmul.x16", T*K*2)
		if err != nil {
			return err
		}
		a := b.args.reset().ptr(s.ptr).ptr(x).u64(uint64(T * K)).i32(int(wdt))
		if err := b.launch("cvt_f32", gridFor(T*K, 256), dim3{256, 1, 1}, 0, a); err != nil {
			return err
		}
		xin = s.ptr
	}
	alpha, beta := float32(1), float32(0)
	r := b.blas.gemmEx(b.blasH, cublasOpT, cublasOpN, int32(N), int32(T), int32(K), unsafe.Pointer(&alpha), w, wt, int32(K),
		xin, xt, int32(K), unsafe.Pointer(&beta), c, ct, int32(ldc), cublasCompute32F, cublasGemmDefault)
	return cublasCheck("cublasGemmEx", r)
}

// own checks that every non-nil tensor is a live tensor of this backend (nil is reported).
func (b *Backend) own(op string, ts ...*kernels.Tensor) error {
	for i, t := range ts {
		if _, err := b.buf(op, fmt.Sprintf("argument %d", i+1), t); err != nil {
			return err
		}
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
