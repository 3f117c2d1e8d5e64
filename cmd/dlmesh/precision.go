package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
)

// precisionFlags are the opt-in bf16 modes of the CUDA backend (see README "GPU"): the KV
// cache's element type and the routed experts' activation precision. Both default to f32,
// where every op stays float32-exact against the reference.
type precisionFlags struct {
	kv, act string
}

func (f *precisionFlags) register(cmd *cobra.Command, kv, act bool) {
	if kv {
		cmd.Flags().StringVar(&f.kv, "kv-dtype", "f32", "KV cache element type: f32 (exact) or bf16 (CUDA: half the cache memory and attention reads)")
	}
	if act {
		cmd.Flags().StringVar(&f.act, "expert-act", "f32", "routed-expert activation precision: f32 (exact) or bf16 (CUDA: half the expert tensor-core work)")
	}
}

// dtypes parses the flags (unset ones are F32).
func (f *precisionFlags) dtypes() (kv, act kernels.DType, err error) {
	kv, act = kernels.F32, kernels.F32
	if f.kv != "" {
		if kv, err = parseDType("--kv-dtype", f.kv); err != nil {
			return 0, 0, err
		}
	}
	if f.act != "" {
		if act, err = parseDType("--expert-act", f.act); err != nil {
			return 0, 0, err
		}
	}
	return kv, act, nil
}

// apply sets both precisions on m.
func (f *precisionFlags) apply(m *model.Model) error {
	kv, act, err := f.dtypes()
	if err != nil {
		return err
	}
	if err := m.SetKVDType(kv); err != nil {
		return fmt.Errorf("--kv-dtype %s: %w", f.kv, err)
	}
	return m.SetExpertActDType(act)
}

// parseDType parses one of f32 or bf16.
func parseDType(flag, s string) (kernels.DType, error) {
	l, err := parseDTypes(flag, s)
	if err != nil || len(l) != 1 {
		return 0, fmt.Errorf("%s %q: want f32 or bf16", flag, s)
	}
	return l[0], nil
}
