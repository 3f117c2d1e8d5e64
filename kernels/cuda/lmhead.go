package cuda

import (
	"fmt"

	"github.com/dlmesh/dlmesh/kernels"
)

// LM head geometry: logits are reduced in segments of lmSegLen columns; cuBLAS writes them in
// chunks of whole segments into a scratch of at most lmScratchFloats.
const (
	lmSegLen        = 2048
	lmScratchFloats = 16 << 20 // 64 MiB
	lmMaxK          = 64
)

// LMHead implements kernels.Backend: per chunk of the vocabulary cuBLAS writes l = w·x into
// device scratch and lm_partial reduces each segment to (max, Σexp, top-K); lm_final merges the
// segments into ids, logits and lse. The logits never leave the device.
func (b *Backend) LMHead(ids, logits, lse, x, w *kernels.Tensor, invTemp float32) error {
	const op = "lm head"
	return b.do(func() error {
		if err := firstErr(b.own(op, ids, logits, lse, x, w), kernels.CheckDType(op, "ids", ids, kernels.I32),
			kernels.CheckDType(op, "logits", logits, kernels.F32), kernels.CheckDType(op, "lse", lse, kernels.F32),
			kernels.CheckDType(op, "x", x, kernels.F32), kernels.CheckDType(op, "w", w, kernels.F32, kernels.BF16, kernels.F16),
			kernels.CheckShape(op, "w", w, -1, -1)); err != nil {
			return err
		}
		V, H := w.Shape[0], w.Shape[1]
		T := x.Rows()
		K := ids.Cols()
		if err := firstErr(kernels.CheckShape(op, "x", x, T, H), kernels.CheckShape(op, "ids", ids, T, K),
			kernels.CheckShape(op, "logits", logits, T, K), kernels.CheckShape(op, "lse", lse, T)); err != nil {
			return err
		}
		if K < 1 || K > lmMaxK || K > V {
			return fmt.Errorf("%s: top-%d of %d: %w", op, K, V, kernels.ErrUnsupported)
		}
		if T == 0 {
			return nil
		}
		nseg := (V + lmSegLen - 1) / lmSegLen
		segsPerChunk := max(1, lmScratchFloats/(T*lmSegLen))
		vc := min(segsPerChunk*lmSegLen, nseg*lmSegLen)
		lg, err := b.scratchBuf("lmhead.logits", 4*T*vc)
		if err != nil {
			return err
		}
		part, err := b.scratchBuf("lmhead.partials", 4*T*nseg*(2*K+2))
		if err != nil {
			return err
		}
		pval := part.ptr
		pidx := pval + uintptr(4*T*nseg*K)
		pmax := pidx + uintptr(4*T*nseg*K)
		psum := pmax + uintptr(4*T*nseg)
		esz := uintptr(w.DType.Size())
		for v0 := 0; v0 < V; v0 += vc {
			n := min(vc, V-v0)
			if err := b.gemm(lg.ptr, ptrOf(x), ptrOf(w)+uintptr(v0*H)*esz, w.DType, T, n, H, n); err != nil {
				return err
			}
			segs := (n + lmSegLen - 1) / lmSegLen
			a := b.args.reset().ptr(lg.ptr).i32(n).i32(v0).i32(lmSegLen).i32(K).f32(invTemp).i32(v0 / lmSegLen).i32(nseg).
				ptr(pval).ptr(pidx).ptr(pmax).ptr(psum)
			if err := b.launch("lm_partial", dim3{uint32(segs), uint32(T), 1}, dim3{256, 1, 1}, 0, a); err != nil {
				return err
			}
		}
		a := b.args.reset().ptr(ptrOf(ids)).ptr(ptrOf(logits)).ptr(ptrOf(lse)).ptr(pval).ptr(pidx).ptr(pmax).ptr(psum).i32(nseg).i32(K)
		return b.launch("lm_final", grid1(T), dim3{256, 1, 1}, 0, a)
	})
}
