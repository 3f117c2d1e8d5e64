//go:build amd64

package cpu

import (
	"os"

	"golang.org/x/sys/cpu"
)

// useSIMD selects the AVX2+FMA kernels of simd_amd64.s. Setting DLMESH_CPU_NOSIMD=1 in the
// environment keeps the pure-Go kernels (to compare the two).
var useSIMD = cpu.X86.HasAVX2 && cpu.X86.HasFMA && os.Getenv("DLMESH_CPU_NOSIMD") != "1"

// dot2x3AVX returns the dot products over the first n (a multiple of 8) elements of x rows u, v
// with weight rows w0, w1, w2.
//
//go:noescape
func dot2x3AVX(u, v, w0, w1, w2 *float32, n int) (a0, a1, a2, c0, c1, c2 float32)

// dot1x4AVX returns the dot products over the first n (a multiple of 8) elements of u with
// w0..w3.
//
//go:noescape
func dot1x4AVX(u, w0, w1, w2, w3 *float32, n int) (a0, a1, a2, a3 float32)

// dot1AVX returns the dot product over the first n (a multiple of 8) elements of u and w.
//
//go:noescape
func dot1AVX(u, w *float32, n int) (s float32)

// widenBF16AVX widens the first n (a multiple of 8) little-endian BF16 values at src (2n bytes,
// any alignment) into dst.
//
//go:noescape
func widenBF16AVX(dst *float32, src *byte, n int)

// accumRowsAVX adds w[j]·row j to dst[:d] for j < n in order, the rows ld floats apart (d a
// multiple of 8).
//
//go:noescape
func accumRowsAVX(dst, rows, w *float32, n, d, ld int)
