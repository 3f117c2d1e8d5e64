//go:build !amd64

package cpu

// useSIMD is false: only amd64 has the assembly kernels.
var useSIMD = false

func dot2x3AVX(u, v, w0, w1, w2 *float32, n int) (a0, a1, a2, c0, c1, c2 float32) {
	panic("cpu: no SIMD kernels on this architecture")
}

func dot1x4AVX(u, w0, w1, w2, w3 *float32, n int) (a0, a1, a2, a3 float32) {
	panic("cpu: no SIMD kernels on this architecture")
}

func dot1AVX(u, w *float32, n int) (s float32) {
	panic("cpu: no SIMD kernels on this architecture")
}

func widenBF16AVX(dst *float32, src *byte, n int) {
	panic("cpu: no SIMD kernels on this architecture")
}

func accumRowsAVX(dst, rows, w *float32, n, d, ld int) {
	panic("cpu: no SIMD kernels on this architecture")
}
