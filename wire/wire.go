// Package wire is the tensor codec of the mesh's protos: activations travel as raw little-endian
// f32 (exact, the default) or bf16 (half the bytes, rounded to nearest even) bytes fields, ids as
// i32, never as repeated floats. attnd, expertd and the gateway all encode and decode with it.
//
// Who may import: attnd, expertd, gateway, cmd/dlmesh, mesh, tests. It imports kernels (for the
// bf16 conversions) only.
package wire

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/dlmesh/dlmesh/kernels"
)

// AppendF32 appends v as little-endian f32 (bf16 false) or bf16 (bf16 true) bytes.
func AppendF32(dst []byte, v []float32, bf16 bool) []byte {
	if bf16 {
		for _, f := range v {
			dst = binary.LittleEndian.AppendUint16(dst, kernels.F32ToBF16(f))
		}
		return dst
	}
	for _, f := range v {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(f))
	}
	return dst
}

// DecodeF32 fills dst from little-endian f32 or bf16 bytes; len(b) must be exactly len(dst)
// elements.
func DecodeF32(dst []float32, b []byte, bf16 bool) error {
	size := 4
	if bf16 {
		size = 2
	}
	if len(b) != size*len(dst) {
		return fmt.Errorf("wire: %d bytes for %d elements of %d bytes", len(b), len(dst), size)
	}
	if bf16 {
		for i := range dst {
			dst[i] = kernels.BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
		return nil
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return nil
}

// AppendI32 appends v as little-endian i32 bytes.
func AppendI32(dst []byte, v []int32) []byte {
	for _, x := range v {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(x))
	}
	return dst
}

// DecodeI32 fills dst from little-endian i32 bytes; len(b) must be exactly 4·len(dst).
func DecodeI32(dst []int32, b []byte) error {
	if len(b) != 4*len(dst) {
		return fmt.Errorf("wire: %d bytes for %d int32 elements", len(b), len(dst))
	}
	for i := range dst {
		dst[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return nil
}
