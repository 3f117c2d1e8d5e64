package wire

import (
	"math"
	"strings"
	"testing"
)

func TestF32RoundTrip(t *testing.T) {
	v := []float32{0, 1, -2.5, 3.1415927, float32(math.Inf(1)), 1e-30}
	for _, tc := range []struct {
		name string
		bf16 bool
		size int
	}{{"f32", false, 4}, {"bf16", true, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			b := AppendF32(nil, v, tc.bf16)
			if len(b) != tc.size*len(v) {
				t.Fatalf("%d bytes for %d elements, want %d", len(b), len(v), tc.size*len(v))
			}
			got := make([]float32, len(v))
			if err := DecodeF32(got, b, tc.bf16); err != nil {
				t.Fatal(err)
			}
			for i := range v {
				tol := float64(0)
				if tc.bf16 {
					tol = math.Abs(float64(v[i])) / 128 // bf16 keeps 8 significant bits
				}
				if d := math.Abs(float64(got[i] - v[i])); d > tol && !math.IsInf(float64(v[i]), 0) {
					t.Errorf("element %d: %g, want %g (tolerance %g)", i, got[i], v[i], tol)
				}
			}
			if err := DecodeF32(got, b[:len(b)-1], tc.bf16); err == nil || !strings.Contains(err.Error(), "wire:") {
				t.Errorf("short buffer: err %v, want a wire: length error", err)
			}
		})
	}
}

func TestI32RoundTrip(t *testing.T) {
	v := []int32{0, -1, 7, math.MaxInt32, math.MinInt32}
	b := AppendI32([]byte{9}, v)[1:]
	got := make([]int32, len(v))
	if err := DecodeI32(got, b); err != nil {
		t.Fatal(err)
	}
	for i := range v {
		if got[i] != v[i] {
			t.Errorf("element %d: %d, want %d", i, got[i], v[i])
		}
	}
	if err := DecodeI32(got, b[:3]); err == nil {
		t.Error("3 bytes for 5 ids: no error")
	}
}
