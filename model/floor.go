package model

import (
	"fmt"

	"github.com/dlmesh/dlmesh/kernels"
)

// StepRead is the least a step must read from memory: each weight it uses once and the KV cache
// of its context once. Divided by the device's read rate it is the step's floor.
type StepRead struct {
	// Experts is the routed expert weights of the experts the router chose at least once,
	// summed over the MoE layers (Touched·3·Hidden·MoEIntermediate bf16 values).
	Experts int64
	// Other is every other weight the step uses: attention, norms, router gates and bias, shared
	// experts, dense FFNs, the final norm, the LM head, and the embedding rows of the step's
	// tokens (not the whole table).
	Other int64
	// KV is the cached K and V of the committed context of every sequence, at the cache's dtype.
	KV int64
	// Touched is the distinct routed experts chosen, summed over the MoE layers; Possible is
	// MoE layers × Experts.
	Touched, Possible int
}

// Total is Experts + Other + KV.
func (r StepRead) Total() int64 { return r.Experts + r.Other + r.KV }

// StepReadBytes is what a step of tokens rows must read, given the distinct experts touched in
// each MoE layer (touched[j] for the j-th of MoELayers(); nil means every expert of every
// layer), the committed KV positions summed over the step's sequences, and the cache dtype.
// Weights are counted at bf16 as checkpoints store them (the expert bias at f32).
func (c *Config) StepReadBytes(touched []int, tokens int, kvPositions int64, kvDType kernels.DType) (StepRead, error) {
	moe := c.MoELayers()
	if touched != nil && len(touched) != len(moe) {
		return StepRead{}, fmt.Errorf("model: step read bytes: %d touched counts for %d MoE layers", len(touched), len(moe))
	}
	if tokens < 0 || kvPositions < 0 {
		return StepRead{}, fmt.Errorf("model: step read bytes: tokens %d, kv positions %d: want non-negative", tokens, kvPositions)
	}
	if kvDType == 0 {
		kvDType = kernels.F32
	}
	if kvDType != kernels.F32 && kvDType != kernels.BF16 {
		return StepRead{}, fmt.Errorf("model: step read bytes: kv dtype %v: want F32 or BF16", kvDType)
	}
	p := c.Params()
	var r StepRead
	r.Possible = len(moe) * c.Experts
	for j := range moe {
		n := c.Experts
		if touched != nil {
			n = touched[j]
			if n < 0 || n > c.Experts {
				return StepRead{}, fmt.Errorf("model: step read bytes: MoE layer %d: %d experts touched, want [0, %d]", moe[j], n, c.Experts)
			}
		}
		r.Touched += n
	}
	const bf16 = 2
	r.Experts = int64(r.Touched) * p.PerExpert * bf16
	r.Other = (p.Attention-p.Embedding)*bf16 + int64(tokens)*int64(c.Hidden)*bf16
	if c.ExpertBias {
		r.Other += int64(len(moe)) * int64(c.Experts) * 4
	}
	r.KV = int64(c.Layers) * 2 * int64(c.KVHeads) * int64(c.HeadDim) * kvPositions * int64(kvDType.Size())
	return r, nil
}
