package main

import (
	"context"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/model"
)

func TestPrecisionFlags(t *testing.T) {
	for _, tc := range []struct {
		name, kv, act string
		wantKV        kernels.DType
		wantAct       kernels.DType
		err           string
	}{
		{"defaults", "", "", kernels.F32, kernels.F32, ""},
		{"bf16 both", "bf16", "BF16", kernels.BF16, kernels.BF16, ""},
		{"f16 cache", "f16", "", 0, 0, "--kv-dtype"},
		{"list", "", "f32,bf16", 0, 0, "--expert-act"},
		{"junk", "", "fast", 0, 0, "--expert-act"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := precisionFlags{kv: tc.kv, act: tc.act}
			kv, act, err := f.dtypes()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil || kv != tc.wantKV || act != tc.wantAct {
				t.Fatalf("dtypes() = %v, %v, %v; want %v, %v", kv, act, err, tc.wantKV, tc.wantAct)
			}
		})
	}
}

// TestPrecisionApply: bf16 expert activations are accepted on the CPU backend (which computes
// in float32 anyway); a bf16 KV cache is refused at once, naming the flag.
func TestPrecisionApply(t *testing.T) {
	d, err := resolveModelDir("")
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(context.Background(), d, cpu.New(), model.LoadOptions{Attention: true, Experts: []int{0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := (&precisionFlags{act: "bf16"}).apply(m); err != nil {
		t.Fatal(err)
	}
	for i, set := range m.Experts.Layers {
		if set.ActDType != kernels.BF16 {
			t.Fatalf("layer %d: activation dtype %v", i, set.ActDType)
		}
	}
	err = (&precisionFlags{kv: "bf16"}).apply(m)
	if err == nil || !strings.Contains(err.Error(), "--kv-dtype bf16") {
		t.Fatalf("bf16 cache on the CPU backend: %v", err)
	}
}
