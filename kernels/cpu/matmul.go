package cpu

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

// mat is a read view of a 2-D weight matrix [rows, cols] of F32, BF16 or F16.
type mat struct {
	dt         kernels.DType
	f32        []float32
	raw        []byte
	rows, cols int
}

// weight returns a view of t as a [rows, cols] matrix (a negative size matches any).
func (b *Backend) weight(op, arg string, t *kernels.Tensor, rows, cols int) (mat, error) {
	if err := kernels.CheckDType(op, arg, t, kernels.F32, kernels.BF16, kernels.F16); err != nil {
		return mat{}, err
	}
	if err := kernels.CheckShape(op, arg, t, rows, cols); err != nil {
		return mat{}, err
	}
	s, err := b.storeOf(op, arg, t)
	if err != nil {
		return mat{}, err
	}
	return mat{dt: t.DType, f32: s.f32, raw: s.raw, rows: t.Shape[0], cols: t.Shape[1]}, nil
}

// vec returns a view of a weight vector of any shape (F32, BF16 or F16) as one row.
func (b *Backend) vec(op, arg string, t *kernels.Tensor) (mat, error) {
	if err := kernels.CheckDType(op, arg, t, kernels.F32, kernels.BF16, kernels.F16); err != nil {
		return mat{}, err
	}
	s, err := b.storeOf(op, arg, t)
	if err != nil {
		return mat{}, err
	}
	return mat{dt: t.DType, f32: s.f32, raw: s.raw, rows: 1, cols: t.Numel()}, nil
}

// littleEndian reports whether the host stores integers little-endian (so checkpoint bytes can
// be read as []uint16 in place).
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// rowsF32 returns rows [r0, r1) as float32, aliasing F32 data or widening into buf (which must
// hold (r1-r0)·cols values).
func (m *mat) rowsF32(r0, r1 int, buf []float32) []float32 {
	lo, hi := r0*m.cols, r1*m.cols
	if m.dt == kernels.F32 {
		return m.f32[lo:hi]
	}
	dst := buf[:hi-lo]
	src := m.raw[2*lo : 2*hi]
	widen(m.dt, dst, src)
	return dst
}

// widen converts little-endian BF16/F16 bytes src into dst (len(src) = 2·len(dst)).
//
//go:norace
func widen(dt kernels.DType, dst []float32, src []byte) {
	if len(dst) == 0 {
		return
	}
	if dt == kernels.F16 {
		for i := range dst {
			dst[i] = kernels.F16ToF32(uint16(src[2*i]) | uint16(src[2*i+1])<<8)
		}
		return
	}
	if useSIMD && littleEndian {
		n8 := len(dst) &^ 7
		if n8 > 0 {
			widenBF16AVX(&dst[0], &src[0], n8)
		}
		src = src[:2*len(dst)]
		for i := n8; i < len(dst); i++ {
			dst[i] = math.Float32frombits(uint32(src[2*i])<<16 | uint32(src[2*i+1])<<24)
		}
		return
	}
	if littleEndian && uintptr(unsafe.Pointer(&src[0]))%2 == 0 {
		u := unsafe.Slice((*uint16)(unsafe.Pointer(&src[0])), len(dst))
		for i, v := range u {
			dst[i] = math.Float32frombits(uint32(v) << 16)
		}
		return
	}
	src = src[:2*len(dst)]
	for i := range dst {
		dst[i] = math.Float32frombits(uint32(src[2*i])<<16 | uint32(src[2*i+1])<<24)
	}
}

// at returns element i of a one-row view as float32.
func (m *mat) at(i int) float32 {
	switch m.dt {
	case kernels.F32:
		return m.f32[i]
	case kernels.BF16:
		return math.Float32frombits(uint32(m.raw[2*i])<<16 | uint32(m.raw[2*i+1])<<24)
	}
	return kernels.F16ToF32(uint16(m.raw[2*i]) | uint16(m.raw[2*i+1])<<8)
}

// tileRows is how many weight rows are widened together: about 64 KiB of float32, a multiple
// of 3 (the micro-kernel's width) in [3, 96].
func tileRows(k int) int {
	nb := 16384 / max(k, 1)
	nb = min(max(nb, 3), 96)
	return nb - nb%3
}

// MatMul implements kernels.Backend: dst[t,n] = Σ_k x[t,k]·w[n,k].
func (b *Backend) MatMul(dst, x, w *kernels.Tensor) error {
	const op = "cpu: matmul"
	if err := kernels.CheckShape(op, "x", x, -1, -1); err != nil {
		return err
	}
	T, K := x.Shape[0], x.Shape[1]
	wm, err := b.weight(op, "w", w, -1, K)
	if err != nil {
		return err
	}
	N := wm.rows
	if err := kernels.CheckShape(op, "dst", dst, T, N); err != nil {
		return err
	}
	xd, err := b.f32(op, "x", x)
	if err != nil {
		return err
	}
	dd, err := b.f32w(op, "dst", dst)
	if err != nil {
		return err
	}
	if overlaps(dd, xd) {
		return fmt.Errorf("%s: dst aliases x: %w", op, kernels.ErrShape)
	}
	b.matmul(dd, xd, T, wm)
	return nil
}

// matmul computes dst[T,N] = x[T,K]·w^T in parallel over tiles of weight rows (and of x rows
// when T is large).
func (b *Backend) matmul(dst, x []float32, T int, w mat) {
	N, K := w.rows, w.cols
	if T == 0 || N == 0 {
		return
	}
	if K == 0 {
		clear(dst[:T*N])
		return
	}
	nb := tileRows(K)
	nTiles := (N + nb - 1) / nb
	// Shrink the tile when there are too few of them to feed every worker.
	for nb > 3 && nTiles < 2*b.workers {
		nb = max(3, nb/2-(nb/2)%3)
		nTiles = (N + nb - 1) / nb
	}
	const tChunk = 64
	tChunks := (T + tChunk - 1) / tChunk
	b.parallel(nTiles*tChunks, nb*K, func(task int, buf []float32) {
		tile, tc := task/tChunks, task%tChunks
		n0, n1 := tile*nb, min(N, (tile+1)*nb)
		t0, t1 := tc*tChunk, min(T, (tc+1)*tChunk)
		wt := w.rowsF32(n0, n1, buf)
		gemmTile(dst[t0*N:], N, n0, x[t0*K:t1*K], t1-t0, K, wt, n1-n0)
	})
}

// matmulSerial is matmul on the calling goroutine, with buf of at least tileRows(K)·K floats.
// dst has row stride N = w.rows.
func matmulSerial(dst, x []float32, T int, w mat, buf []float32) {
	N, K := w.rows, w.cols
	if K == 0 {
		clear(dst[:T*N])
		return
	}
	nb := tileRows(K)
	for n0 := 0; n0 < N; n0 += nb {
		n1 := min(N, n0+nb)
		gemmTile(dst, N, n0, x, T, K, w.rowsF32(n0, n1, buf), n1-n0)
	}
}

// gemmTile computes dst[t·ldd + n0 + j] = Σ_k x[t·K + k]·wt[j·K + k] for t < T, j < nb.
//
// The micro-kernel takes 2 x rows × 3 weight rows (six accumulators: as many as the Go
// compiler keeps in registers without spilling on amd64). Every path sums each dot product in
// the same order, so a result does not depend on the tiling or the number of workers.
//
//go:norace
func gemmTile(dst []float32, ldd, n0 int, x []float32, T, K int, wt []float32, nb int) {
	t := 0
	for ; t+2 <= T; t += 2 {
		x0, x1 := x[t*K:(t+1)*K], x[(t+1)*K:(t+2)*K]
		d0, d1 := dst[t*ldd+n0:t*ldd+n0+nb], dst[(t+1)*ldd+n0:(t+1)*ldd+n0+nb]
		j := 0
		for ; j+3 <= nb; j += 3 {
			a0, a1, a2, c0, c1, c2 := dot2x3(x0, x1, wt[j*K:(j+1)*K], wt[(j+1)*K:(j+2)*K], wt[(j+2)*K:(j+3)*K])
			d0[j], d0[j+1], d0[j+2] = a0, a1, a2
			d1[j], d1[j+1], d1[j+2] = c0, c1, c2
		}
		for ; j < nb; j++ {
			d0[j], d1[j] = dot2x1(x0, x1, wt[j*K:(j+1)*K])
		}
	}
	if t < T {
		x0 := x[t*K : (t+1)*K]
		d0 := dst[t*ldd+n0 : t*ldd+n0+nb]
		j := 0
		for ; j+4 <= nb; j += 4 {
			d0[j], d0[j+1], d0[j+2], d0[j+3] = dot1x4(x0, wt[j*K:(j+1)*K], wt[(j+1)*K:(j+2)*K], wt[(j+2)*K:(j+3)*K], wt[(j+3)*K:(j+4)*K])
		}
		for ; j < nb; j++ {
			d0[j] = dot(x0, wt[j*K:(j+1)*K])
		}
	}
}

// The dot kernels below run the AVX2+FMA assembly of simd_amd64.s when useSIMD is set, and
// the pure-Go loops (the *Go variants) otherwise. Either way every kernel sums a given dot
// product in the same order: the SIMD path takes the first len(u)&^7 elements in 8 lanes
// (fused multiply-add, reduced by a fixed tree) and adds the rest one by one with dotTail; the
// Go path sums every element in order.

// dot2x3 returns the dot products of x rows u, v with weight rows w0, w1, w2.
//
//go:norace
func dot2x3(u, v, w0, w1, w2 []float32) (a0, a1, a2, c0, c1, c2 float32) {
	if !useSIMD {
		return dot2x3Go(u, v, w0, w1, w2)
	}
	n := len(u)
	v, w0, w1, w2 = v[:n], w0[:n], w1[:n], w2[:n]
	n8 := n &^ 7
	if n8 > 0 {
		a0, a1, a2, c0, c1, c2 = dot2x3AVX(&u[0], &v[0], &w0[0], &w1[0], &w2[0], n8)
	}
	if n8 < n {
		a0, a1, a2 = dotTail(a0, u[n8:], w0[n8:]), dotTail(a1, u[n8:], w1[n8:]), dotTail(a2, u[n8:], w2[n8:])
		c0, c1, c2 = dotTail(c0, v[n8:], w0[n8:]), dotTail(c1, v[n8:], w1[n8:]), dotTail(c2, v[n8:], w2[n8:])
	}
	return
}

// dot2x3Go is dot2x3 in pure Go.
//
//go:norace
func dot2x3Go(u, v, w0, w1, w2 []float32) (a0, a1, a2, c0, c1, c2 float32) {
	n := len(u)
	v, w0, w1, w2 = v[:n], w0[:n], w1[:n], w2[:n]
	for k, x := range u {
		y := v[k]
		p0, p1, p2 := w0[k], w1[k], w2[k]
		a0 += x * p0
		a1 += x * p1
		a2 += x * p2
		c0 += y * p0
		c1 += y * p1
		c2 += y * p2
	}
	return
}

// dot2x1 returns the dot products of u and v with w.
//
//go:norace
func dot2x1(u, v, w []float32) (a, c float32) {
	if useSIMD {
		return dot(u, w), dot(v, w)
	}
	return dot2x1Go(u, v, w)
}

// dot2x1Go is dot2x1 in pure Go.
//
//go:norace
func dot2x1Go(u, v, w []float32) (a, c float32) {
	n := len(u)
	v, w = v[:n], w[:n]
	for k, x := range u {
		p := w[k]
		a += x * p
		c += v[k] * p
	}
	return
}

// dot1x4 returns the dot products of u with w0..w3.
//
//go:norace
func dot1x4(u, w0, w1, w2, w3 []float32) (a0, a1, a2, a3 float32) {
	if !useSIMD {
		return dot1x4Go(u, w0, w1, w2, w3)
	}
	n := len(u)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	n8 := n &^ 7
	if n8 > 0 {
		a0, a1, a2, a3 = dot1x4AVX(&u[0], &w0[0], &w1[0], &w2[0], &w3[0], n8)
	}
	if n8 < n {
		a0, a1 = dotTail(a0, u[n8:], w0[n8:]), dotTail(a1, u[n8:], w1[n8:])
		a2, a3 = dotTail(a2, u[n8:], w2[n8:]), dotTail(a3, u[n8:], w3[n8:])
	}
	return
}

// dot1x4Go is dot1x4 in pure Go.
//
//go:norace
func dot1x4Go(u, w0, w1, w2, w3 []float32) (a0, a1, a2, a3 float32) {
	n := len(u)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	for k, x := range u {
		a0 += x * w0[k]
		a1 += x * w1[k]
		a2 += x * w2[k]
		a3 += x * w3[k]
	}
	return
}

// dot returns Σ u[k]·w[k], summed in the same order as the multi-row kernels, so that a logit
// does not depend on where its row fell in a tile (or on the number of workers).
//
//go:norace
func dot(u, w []float32) float32 {
	if !useSIMD {
		return dotGo(u, w)
	}
	n := len(u)
	w = w[:n]
	n8 := n &^ 7
	var s float32
	if n8 > 0 {
		s = dot1AVX(&u[0], &w[0], n8)
	}
	if n8 < n {
		s = dotTail(s, u[n8:], w[n8:])
	}
	return s
}

// dotGo is dot in pure Go.
//
//go:norace
func dotGo(u, w []float32) float32 {
	return dotTail(0, u, w)
}

// dotTail returns s + Σ u[k]·w[k], adding the products one by one in increasing k.
//
//go:norace
func dotTail(s float32, u, w []float32) float32 {
	w = w[:len(u)]
	for k, x := range u {
		s += x * w[k]
	}
	return s
}

// overlaps reports whether two float32 slices share memory.
func overlaps(a, b []float32) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	a0 := uintptr(unsafe.Pointer(&a[0]))
	b0 := uintptr(unsafe.Pointer(&b[0]))
	a1 := a0 + uintptr(len(a))*4
	b1 := b0 + uintptr(len(b))*4
	return a0 < b1 && b0 < a1
}
