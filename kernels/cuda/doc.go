// Package cuda is the NVIDIA GPU backend of kernels.Backend, usable without cgo.
//
// Layering (gocudrv's, see STYLE.md):
//
//   - driver.go, cublas.go: raw symbol tables — structs of func fields filled from libcuda.so.1
//     and libcublas.so.{13,12} with purego at run time (tests fill them with fakes);
//   - errors.go, thread.go, pool.go, module.go, graph.go: thin wrappers that return errors
//     naming the op and the CUresult (`cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY`), the one locked OS
//     thread every driver call of a context runs on, the device memory pool, PTX loading and
//     kernel launch, CUDA graph capture;
//   - backend.go, ops.go, attention.go, experts.go, lmhead.go: the kernels.Backend ops, whose
//     device code lives in ../llada2.cu (compiled to ptx/llada2.ptx, embedded).
//
// `go build` needs no CUDA: without a driver New returns an error wrapping kernels.ErrNoDevice.
// The KV cache is F32 by default (exact parity with the CPU backend), or BF16 when
// AttnParams.CacheDType asks for it: half the cache traffic and tensor-core attention (bf16 q,
// K, P, V with fp32 accumulation), within bf16 tolerance of the F32 path.
//
// Who may import: model, cmd and tests, through the kernels interface.
package cuda
