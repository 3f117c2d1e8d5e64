package cpu

import (
	"fmt"
	"math"

	"github.com/dlmesh/dlmesh/kernels"
)

// rowGrain is the least number of elements worth handing to another goroutine.
const rowGrain = 1 << 14

// Embed implements kernels.Backend: dst[t,:] = float32(table[ids[t],:]).
func (b *Backend) Embed(dst, table, ids *kernels.Tensor) error {
	const op = "cpu: embed"
	if err := kernels.CheckShape(op, "ids", ids, -1); err != nil {
		return err
	}
	T := ids.Shape[0]
	tab, err := b.weight(op, "table", table, -1, -1)
	if err != nil {
		return err
	}
	if err := kernels.CheckShape(op, "dst", dst, T, tab.cols); err != nil {
		return err
	}
	id, err := b.i32(op, "ids", ids)
	if err != nil {
		return err
	}
	dd, err := b.f32w(op, "dst", dst)
	if err != nil {
		return err
	}
	for t, v := range id {
		if v < 0 || int(v) >= tab.rows {
			return fmt.Errorf("%s: ids[%d] = %d outside [0, %d): %w", op, t, v, tab.rows, kernels.ErrShape)
		}
	}
	H := tab.cols
	for t, v := range id {
		row := dd[t*H : (t+1)*H]
		if tab.dt == kernels.F32 {
			copy(row, tab.f32[int(v)*H:(int(v)+1)*H])
		} else {
			widen(tab.dt, row, tab.raw[2*int(v)*H:2*(int(v)+1)*H])
		}
	}
	return nil
}

// RMSNorm implements kernels.Backend: dst[r,:] = w ⊙ (x[r,:] / sqrt(mean(x[r,:]²) + eps)),
// the mean accumulated in float64. dst may be x.
func (b *Backend) RMSNorm(dst, x, w *kernels.Tensor, eps float32) error {
	const op = "cpu: rmsnorm"
	wv, err := b.vec(op, "w", w)
	if err != nil {
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
	n := wv.cols
	if n == 0 || len(xd)%n != 0 {
		return fmt.Errorf("%s: x %v is not a whole number of rows of len(w) = %d: %w", op, x.Shape, n, kernels.ErrShape)
	}
	if len(dd) != len(xd) {
		return fmt.Errorf("%s: dst %v and x %v differ in size: %w", op, dst.Shape, x.Shape, kernels.ErrShape)
	}
	if overlaps(dd, xd) && &dd[0] != &xd[0] {
		return fmt.Errorf("%s: dst partly overlaps x: %w", op, kernels.ErrShape)
	}
	wf := make([]float32, n)
	for i := range wf {
		wf[i] = wv.at(i)
	}
	rows := len(xd) / n
	b.parallelRange(rows, max(1, rowGrain/n), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			rmsRow(dd[r*n:(r+1)*n], xd[r*n:(r+1)*n], wf, eps)
		}
	})
	return nil
}

// rmsRow is one row of RMSNorm: dst = w ⊙ (x · rsqrt(mean(x²) + eps)); dst may be x.
//
//go:norace
func rmsRow(dst, x, w []float32, eps float32) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	r := float32(1 / math.Sqrt(float64(float32(ss/float64(len(x)))+eps)))
	w = w[:len(x)]
	dst = dst[:len(x)]
	for i, v := range x {
		dst[i] = w[i] * (v * r)
	}
}

// SwiGLU implements kernels.Backend: dst[t,i] = silu(gu[t,i])·gu[t,I+i].
func (b *Backend) SwiGLU(dst, gu *kernels.Tensor) error {
	const op = "cpu: swiglu"
	if err := kernels.CheckShape(op, "gu", gu, -1, -1); err != nil {
		return err
	}
	T, I2 := gu.Shape[0], gu.Shape[1]
	if I2%2 != 0 {
		return fmt.Errorf("%s: gu width %d is odd: %w", op, I2, kernels.ErrShape)
	}
	I := I2 / 2
	if err := kernels.CheckShape(op, "dst", dst, T, I); err != nil {
		return err
	}
	g, err := b.f32(op, "gu", gu)
	if err != nil {
		return err
	}
	dd, err := b.f32w(op, "dst", dst)
	if err != nil {
		return err
	}
	if overlaps(dd, g) {
		return fmt.Errorf("%s: dst aliases gu: %w", op, kernels.ErrShape)
	}
	b.parallelRange(T, max(1, rowGrain/max(I, 1)), func(lo, hi int) {
		for t := lo; t < hi; t++ {
			swigluRow(dd[t*I:(t+1)*I], g[t*I2:(t+1)*I2])
		}
	})
	return nil
}

// swigluRow computes dst[i] = silu(gu[i])·gu[I+i] for I = len(dst).
//
//go:norace
func swigluRow(dst, gu []float32) {
	I := len(dst)
	g, u := gu[:I], gu[I:2*I]
	for i, a := range g {
		dst[i] = silu(a) * u[i]
	}
}

// silu is x·sigmoid(x) in float32 (the exponential in float64).
func silu(x float32) float32 {
	return x / (1 + float32(math.Exp(-float64(x))))
}

// Add implements kernels.Backend: dst += x.
func (b *Backend) Add(dst, x *kernels.Tensor) error {
	const op = "cpu: add"
	if x == nil || dst == nil {
		return fmt.Errorf("%s: nil tensor: %w", op, kernels.ErrShape)
	}
	if err := kernels.CheckShape(op, "x", x, dst.Shape...); err != nil {
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
	b.parallelRange(len(dd), rowGrain*4, func(lo, hi int) {
		d, s := dd[lo:hi], xd[lo:hi]
		for i := range d {
			d[i] += s[i]
		}
	})
	return nil
}

// GatherRows implements kernels.Backend: dst[i,:] = src[idx[i],:].
func (b *Backend) GatherRows(dst, src, idx *kernels.Tensor) error {
	const op = "cpu: gather rows"
	if err := kernels.CheckShape(op, "idx", idx, -1); err != nil {
		return err
	}
	if err := kernels.CheckShape(op, "src", src, -1, -1); err != nil {
		return err
	}
	n, R, C := idx.Shape[0], src.Shape[0], src.Shape[1]
	if err := kernels.CheckShape(op, "dst", dst, n, C); err != nil {
		return err
	}
	ix, err := b.i32(op, "idx", idx)
	if err != nil {
		return err
	}
	sd, err := b.f32(op, "src", src)
	if err != nil {
		return err
	}
	dd, err := b.f32w(op, "dst", dst)
	if err != nil {
		return err
	}
	if overlaps(dd, sd) {
		return fmt.Errorf("%s: dst aliases src: %w", op, kernels.ErrShape)
	}
	for i, r := range ix {
		if r < 0 || int(r) >= R {
			return fmt.Errorf("%s: idx[%d] = %d outside [0, %d): %w", op, i, r, R, kernels.ErrShape)
		}
	}
	for i, r := range ix {
		copy(dd[i*C:(i+1)*C], sd[int(r)*C:(int(r)+1)*C])
	}
	return nil
}
