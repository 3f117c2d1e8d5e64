// Package model is the llada2_moe architecture (LLaDA2.x, the BailingMoeV2 / Ling-2.0 shape):
// config.json parsing and validation, memory-mapped sharded safetensors, loading the parts a
// service needs, and the forward pass over the kernels.Backend op interface.
//
// The forward pass is split along the mesh's seam. The attention part (embeddings, attention
// with its KV cache, norms, routers, shared experts, dense layers, LM head) runs in Model.Step;
// the routed experts of each MoE layer are reached through an ExpertRunner, which is the local
// backend in-process (LocalExperts) and a fan-out to expertd replicas in the mesh. A service loads
// only its part: attnd the attention part, each expertd a subset of the routed experts.
//
// One Step runs a batch of sequences. Each sequence feeds the tokens at positions
// [Pos, Pos+len(Tokens)) against its Cache: their K/V are written into the cache at those
// positions and every row attends, block-causally, to the cached keys before its block's end.
// The whole-window form of the reference (every position of the window in one forward) is the
// same call with Pos 0; the cached form feeds only the current block, or the block that has just
// finished together with the next one, which recomputes the finished block's K/V from its final
// tokens in the same forward.
//
// Who may import: attnd, expertd, gateway (config only), engine, mesh, cmd/dlmesh, tests.
// It imports kernels and errdefs (invalid Step arguments wrap errdefs.ErrInvalidArgument) only.
package model
