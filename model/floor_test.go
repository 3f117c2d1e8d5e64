package model

import (
	"math"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

// TestStepReadBytesMini: the mini shape's figures of issue 15 — ~20.8 GB at batch 1 / ctx 512
// with 163 of 256 experts touched per layer, 31.9 GB with every expert touched.
func TestStepReadBytesMini(t *testing.T) {
	c := MiniConfig()
	moe := len(c.MoELayers())
	touched := make([]int, moe)
	for i := range touched {
		touched[i] = 163
	}
	tests := []struct {
		name    string
		touched []int
		tokens  int
		kv      int64
		dt      kernels.DType
		wantGB  float64
		wantKV  int64
	}{
		{"b1 ctx512 163 touched", touched, 32, 512, kernels.F32, 20.8, 20 * 2 * 4 * 128 * 512 * 4},
		{"b1 ctx512 all touched", nil, 32, 512, kernels.F32, 31.9, 20 * 2 * 4 * 128 * 512 * 4},
		// 32 sequences of 4096 positions, bf16: 5.37 GB of KV (~1.8 ms at 3 TB/s).
		{"b32 ctx4096 bf16 all touched", nil, 32 * 32, 32 * 4096, kernels.BF16, 31.9 + 5.37, 20 * 2 * 4 * 128 * 32 * 4096 * 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := c.StepReadBytes(tc.touched, tc.tokens, tc.kv, tc.dt)
			if err != nil {
				t.Fatal(err)
			}
			if gb := float64(r.Total()) / 1e9; math.Abs(gb-tc.wantGB) > 0.06 {
				t.Errorf("total %.3f GB, want ~%.1f GB (%+v)", gb, tc.wantGB, r)
			}
			if r.KV != tc.wantKV {
				t.Errorf("kv %d bytes, want %d", r.KV, tc.wantKV)
			}
			if r.Possible != moe*256 {
				t.Errorf("possible %d, want %d", r.Possible, moe*256)
			}
		})
	}
}

// TestStepReadBytesTiny checks the sum term by term on the tiny shape.
func TestStepReadBytesTiny(t *testing.T) {
	c, err := LoadConfig(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	moe := c.MoELayers()
	touched := make([]int, len(moe))
	for i := range touched {
		touched[i] = i + 1
	}
	r, err := c.StepReadBytes(touched, 10, 100, kernels.BF16)
	if err != nil {
		t.Fatal(err)
	}
	h, ex := int64(c.Hidden), int64(3*c.Hidden*c.MoEIntermediate)
	sum := 0
	for _, n := range touched {
		sum += n
	}
	if r.Touched != sum || r.Experts != int64(sum)*ex*2 {
		t.Errorf("touched %d experts %d bytes, want %d and %d", r.Touched, r.Experts, sum, int64(sum)*ex*2)
	}
	qkv := h * int64((c.Heads+2*c.KVHeads)*c.HeadDim)
	attn := 2*h + qkv + int64(c.Heads*c.HeadDim)*h + 2*int64(c.HeadDim)
	dense := int64(c.FirstKDense) * 3 * h * int64(c.Intermediate)
	perMoE := int64(c.Experts)*h + int64(c.SharedExperts)*ex
	other := 2*(int64(c.Vocab)*h+h+int64(c.Layers)*attn+dense+int64(len(moe))*perMoE) + 10*h*2 + int64(len(moe)*c.Experts)*4
	if r.Other != other {
		t.Errorf("other %d bytes, want %d", r.Other, other)
	}
	if want := int64(c.Layers) * 2 * int64(c.KVHeads*c.HeadDim) * 100 * 2; r.KV != want {
		t.Errorf("kv %d bytes, want %d", r.KV, want)
	}
	for _, bad := range []struct {
		touched []int
		want    string
	}{{[]int{1}, "touched counts"}, {make([]int, len(moe)-1), "touched counts"}, {append(make([]int, len(moe)-1), c.Experts+1), "experts touched"}} {
		if _, err := c.StepReadBytes(bad.touched, 1, 1, kernels.F32); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("touched %v: error %v, want one saying %q", bad.touched, err, bad.want)
		}
	}
	if _, err := c.StepReadBytes(nil, 1, 1, kernels.I32); err == nil || !strings.Contains(err.Error(), "kv dtype") {
		t.Errorf("I32 kv: error %v, want one naming the kv dtype", err)
	}
}
