//go:build amd64

#include "textflag.h"

// Every kernel here keeps one 8-lane accumulator per dot product, adds x[k:k+8]·w[k:k+8] into
// it with one fused multiply-add per step of 8 (in increasing k), and reduces the lanes with
// HSUM. A dot product therefore has the same value whichever kernel computed it.

// HSUM reduces the 8 lanes l0..l7 of Y to X[0] as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)),
// using X15 as scratch.
#define HSUM(Y, X) \
	VEXTRACTF128 $1, Y, X15 \
	VADDPS       X15, X, X  \
	VMOVHLPS     X, X, X15  \
	VADDPS       X15, X, X  \
	VMOVSHDUP    X, X15     \
	VADDSS       X15, X, X

// func dot2x3AVX(u, v, w0, w1, w2 *float32, n int) (a0, a1, a2, c0, c1, c2 float32)
TEXT ·dot2x3AVX(SB), NOSPLIT, $0-72
	MOVQ u+0(FP), SI
	MOVQ v+8(FP), DX
	MOVQ w0+16(FP), R8
	MOVQ w1+24(FP), R9
	MOVQ w2+32(FP), R10
	MOVQ n+40(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	XORQ   AX, AX
	CMPQ   AX, CX
	JGE    done2x3

loop2x3:
	VMOVUPS     (SI)(AX*4), Y6
	VMOVUPS     (DX)(AX*4), Y7
	VMOVUPS     (R8)(AX*4), Y8
	VFMADD231PS Y8, Y6, Y0
	VFMADD231PS Y8, Y7, Y3
	VMOVUPS     (R9)(AX*4), Y9
	VFMADD231PS Y9, Y6, Y1
	VFMADD231PS Y9, Y7, Y4
	VMOVUPS     (R10)(AX*4), Y10
	VFMADD231PS Y10, Y6, Y2
	VFMADD231PS Y10, Y7, Y5
	ADDQ        $8, AX
	CMPQ        AX, CX
	JLT         loop2x3

done2x3:
	HSUM(Y0, X0)
	HSUM(Y1, X1)
	HSUM(Y2, X2)
	HSUM(Y3, X3)
	HSUM(Y4, X4)
	HSUM(Y5, X5)
	VMOVSS X0, a0+48(FP)
	VMOVSS X1, a1+52(FP)
	VMOVSS X2, a2+56(FP)
	VMOVSS X3, c0+60(FP)
	VMOVSS X4, c1+64(FP)
	VMOVSS X5, c2+68(FP)
	VZEROUPPER
	RET

// func dot1x4AVX(u, w0, w1, w2, w3 *float32, n int) (a0, a1, a2, a3 float32)
TEXT ·dot1x4AVX(SB), NOSPLIT, $0-64
	MOVQ u+0(FP), SI
	MOVQ w0+8(FP), R8
	MOVQ w1+16(FP), R9
	MOVQ w2+24(FP), R10
	MOVQ w3+32(FP), R11
	MOVQ n+40(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	CMPQ   AX, CX
	JGE    done1x4

loop1x4:
	VMOVUPS     (SI)(AX*4), Y6
	VFMADD231PS (R8)(AX*4), Y6, Y0
	VFMADD231PS (R9)(AX*4), Y6, Y1
	VFMADD231PS (R10)(AX*4), Y6, Y2
	VFMADD231PS (R11)(AX*4), Y6, Y3
	ADDQ        $8, AX
	CMPQ        AX, CX
	JLT         loop1x4

done1x4:
	HSUM(Y0, X0)
	HSUM(Y1, X1)
	HSUM(Y2, X2)
	HSUM(Y3, X3)
	VMOVSS X0, a0+48(FP)
	VMOVSS X1, a1+52(FP)
	VMOVSS X2, a2+56(FP)
	VMOVSS X3, a3+60(FP)
	VZEROUPPER
	RET

// func dot1AVX(u, w *float32, n int) (s float32)
TEXT ·dot1AVX(SB), NOSPLIT, $0-28
	MOVQ u+0(FP), SI
	MOVQ w+8(FP), R8
	MOVQ n+16(FP), CX
	VXORPS Y0, Y0, Y0
	XORQ   AX, AX
	CMPQ   AX, CX
	JGE    done1

loop1:
	VMOVUPS     (SI)(AX*4), Y6
	VFMADD231PS (R8)(AX*4), Y6, Y0
	ADDQ        $8, AX
	CMPQ        AX, CX
	JLT         loop1

done1:
	HSUM(Y0, X0)
	VMOVSS X0, s+24(FP)
	VZEROUPPER
	RET

// func widenBF16AVX(dst *float32, src *byte, n int)
//
// dst[i] = float32 with bits src[i]<<16 for i < n (n a multiple of 8).
TEXT ·widenBF16AVX(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX
	CMPQ AX, CX
	JGE  doneWiden

loopWiden:
	VPMOVZXWD (SI)(AX*2), Y0
	VPSLLD    $16, Y0, Y0
	VMOVUPS   Y0, (DI)(AX*4)
	ADDQ      $8, AX
	CMPQ      AX, CX
	JLT       loopWiden

doneWiden:
	VZEROUPPER
	RET

// func accumRowsAVX(dst, rows, w *float32, n, d, ld int)
//
// For j < n in order, dst[i] += w[j]·rows[j·ld + i] for i < d (a multiple of 8), each update a
// fused multiply-add.
TEXT ·accumRowsAVX(SB), NOSPLIT, $0-48
	MOVQ dst+0(FP), DI
	MOVQ rows+8(FP), SI
	MOVQ w+16(FP), R8
	MOVQ n+24(FP), CX
	MOVQ d+32(FP), DX
	MOVQ ld+40(FP), R9
	SHLQ $2, R9
	XORQ BX, BX
	CMPQ BX, CX
	JGE  doneAccum

rowAccum:
	VBROADCASTSS (R8)(BX*4), Y0
	XORQ         AX, AX
	CMPQ         AX, DX
	JGE          nextAccum

colAccum:
	VMOVUPS     (DI)(AX*4), Y1
	VFMADD231PS (SI)(AX*4), Y0, Y1
	VMOVUPS     Y1, (DI)(AX*4)
	ADDQ        $8, AX
	CMPQ        AX, DX
	JLT         colAccum

nextAccum:
	ADDQ R9, SI
	INCQ BX
	CMPQ BX, CX
	JLT  rowAccum

doneAccum:
	VZEROUPPER
	RET
