// Package kernels is the operation interface the llada2_moe forward pass is written against, and
// the small vocabulary (DType, Tensor, Batch) shared by every backend.
//
// A Backend owns its tensors: on the CPU backend (kernels/cpu) they live in host memory, on the
// CUDA backend (kernels/cuda) in device memory. The model never touches storage directly; it
// moves data across the host boundary only with Upload and Download, once per step, and chains
// device-resident ops in between. Ops are enqueued in order on the backend's stream; a backend
// may run them asynchronously, so an op's error may be an argument error reported at once or a
// sticky device error reported by a later op, Download or Sync.
//
// Every op states its unfused reference math in its doc comment; the CPU backend implements
// exactly that math in float32, and the float64 versions in the tests check both backends.
//
// Who may import: model, the backends, and tests. Nothing here imports another dlmesh package.
package kernels

import (
	"errors"
	"fmt"
)

// DType is the element type of a Tensor.
type DType uint8

// Element types. Activations are F32; weights are stored as they come from the checkpoint
// (BF16 for llada2_moe, F32 for the router's expert bias); indices are I32.
const (
	F32 DType = iota + 1
	BF16
	F16
	I32
)

// Size is the size of one element in bytes.
func (d DType) Size() int {
	switch d {
	case F32, I32:
		return 4
	case BF16, F16:
		return 2
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case BF16:
		return "BF16"
	case F16:
		return "F16"
	case I32:
		return "I32"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Errors shared by the backends.
var (
	ErrShape       = errors.New("kernels: shape mismatch")
	ErrDType       = errors.New("kernels: unsupported dtype")
	ErrNoDevice    = errors.New("kernels: no device")
	ErrFreed       = errors.New("kernels: tensor already freed")
	ErrWrongOwner  = errors.New("kernels: tensor belongs to another backend")
	ErrUnsupported = errors.New("kernels: operation not supported by this backend")
)

// Tensor is a dense row-major array owned by one Backend. Storage is opaque outside the backend
// that made it (host slices on the CPU, a device pointer on CUDA).
type Tensor struct {
	DType   DType
	Shape   []int
	Storage any
}

// Numel is the number of elements.
func (t *Tensor) Numel() int {
	n := 1
	for _, s := range t.Shape {
		n *= s
	}
	return n
}

// Rows is the product of every dimension but the last; Cols is the last dimension.
func (t *Tensor) Rows() int { return t.Numel() / t.Cols() }

// Cols is the last dimension (1 for a scalar).
func (t *Tensor) Cols() int {
	if len(t.Shape) == 0 {
		return 1
	}
	return t.Shape[len(t.Shape)-1]
}

// Bytes is the size of the tensor's data in bytes.
func (t *Tensor) Bytes() int { return t.Numel() * t.DType.Size() }

func (t *Tensor) String() string {
	if t == nil {
		return "<nil tensor>"
	}
	return fmt.Sprintf("%v%v", t.DType, t.Shape)
}

// AttnParams describes the attention geometry of the model.
type AttnParams struct {
	Heads, KVHeads, HeadDim int
	RotaryDim               int     // the first RotaryDim dims of each q/k head are rotated (HF rotate_half)
	RopeTheta               float64 // base of the rotary frequencies
	Eps                     float32 // RMSNorm epsilon of the QK-norm
	BlockLen                int     // block-causal granularity, counted from position 0
	// CacheDType is the KV cache's element type: F32 (the zero value means F32) or BF16 where
	// the backend supports it (CUDA). Attention math is float32 either way.
	CacheDType DType
}

// QKVCols is the width of a packed query_key_value row: (Heads + 2·KVHeads)·HeadDim.
func (p AttnParams) QKVCols() int { return (p.Heads + 2*p.KVHeads) * p.HeadDim }

// Seq places one sequence of a step in the packed rows of a batch.
type Seq struct {
	Row, Len int     // rows [Row, Row+Len) of the step's activations belong to this sequence
	Pos      int     // position of row Row; row Row+i has position Pos+i
	Cache    *Tensor // the sequence's KV cache from Backend.NewCache
}

// Batch is a backend-prepared description of a step's sequences, made once per step by
// Backend.NewBatch (so a device backend uploads the metadata once) and used by every layer.
type Batch struct {
	Seqs    []Seq
	Rows    int     // total rows, Σ Len
	Pos     *Tensor // I32[Rows]: the position of every row
	Storage any     // backend-specific (device copies of the metadata)
}

// RouterParams is the llada2_moe group-limited sigmoid router.
type RouterParams struct {
	TopK      int     // experts per token (num_experts_per_tok)
	NGroup    int     // expert groups (n_group)
	TopKGroup int     // groups kept per token (topk_group); a group's score is the sum of its top-2
	Norm      bool    // normalise the chosen weights to sum 1 (norm_topk_prob)
	Scale     float32 // routed_scaling_factor
}

// Expert is one SwiGLU FFN: GateUp is [2·I, H] (gate rows then up rows), Down is [H, I].
type Expert struct {
	GateUp, Down *Tensor
}

// ExpertSet maps global expert ids to the experts a backend holds for one layer. Experts[e] is
// nil when expert e is not held; a routed choice of such an expert contributes nothing.
type ExpertSet struct {
	Experts []*Expert
	// ActDType is the precision of the activations a backend multiplies with bf16 expert
	// weights: 0 or F32 keeps them to float32 precision (CUDA's tensor-core path splits each
	// into a hi and a lo bf16 term), BF16 rounds them to bf16 once, as the dense bf16 GEMMs do
	// (CUDA: half the tensor-core work; relative error ~2⁻⁸ per product). The CPU backend always
	// computes in float32.
	ActDType DType
}

// Device is the accelerator a device backend computes on, as its driver reports it.
type Device struct {
	Index int    // device ordinal in the process (the N of "cuda:N")
	Name  string // e.g. "NVIDIA H100 80GB HBM3"
	// UUID is the driver's device UUID in NVML's form, "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
	// ("" when the driver cannot say).
	UUID                          string
	MemoryTotalMiB, MemoryFreeMiB uint64
}

// Describer is implemented by backends that compute on a device (CUDA); the CPU backend has no
// device to describe.
type Describer interface {
	Device() (Device, error)
}

// Concurrent is implemented by a backend that says whether several goroutines may enqueue ops
// on it at once (each on its own tensors). A backend without it, or whose Concurrent reports
// false, is for one goroutine at a time: a caller that overlaps work (attnd's micro-batches)
// must serialise its use of the backend. Use IsConcurrent to ask.
type Concurrent interface {
	Concurrent() bool
}

// IsConcurrent reports whether be declares that several goroutines may use it at once.
func IsConcurrent(be Backend) bool {
	c, ok := be.(Concurrent)
	return ok && c.Concurrent()
}

// Backend runs the ops of the forward pass. Implementations are safe for use by one goroutine
// at a time per Backend value, unless they implement Concurrent and report true.
type Backend interface {
	// Name identifies the backend ("cpu", "cuda:0").
	Name() string

	// Alloc returns a zeroed tensor.
	Alloc(dt DType, shape ...int) (*Tensor, error)
	// Load returns a tensor holding raw little-endian data of the given dtype and shape. A host
	// backend may alias raw (which must then stay valid and unmodified); a device backend copies.
	Load(dt DType, shape []int, raw []byte) (*Tensor, error)
	// Free releases a tensor's storage; the tensor must not be used afterwards.
	Free(t *Tensor)
	// Upload copies host data into t: src is []float32 (F32), []int32 (I32) or []uint16 (BF16/F16).
	Upload(t *Tensor, src any) error
	// Download copies t into host memory dst ([]float32, []int32 or []uint16), after every
	// earlier op has finished.
	Download(dst any, t *Tensor) error
	// Sync waits for every enqueued op and reports the first error.
	Sync() error
	// Close releases everything the backend holds.
	Close() error

	// NewCache returns a KV cache for one sequence: Layers × {K,V} × KVHeads × CapLen × HeadDim.
	NewCache(layers, capLen int, p AttnParams) (*Tensor, error)
	// NewBatch prepares the step's sequence metadata (and uploads row positions).
	NewBatch(seqs []Seq) (*Batch, error)
	// FreeBatch releases what NewBatch allocated.
	FreeBatch(b *Batch)

	// Embed: dst[t,:] = float32(table[ids[t],:]). dst F32[T,H], table [V,H], ids I32[T].
	Embed(dst, table, ids *Tensor) error
	// MatMul: dst[t,n] = Σ_k x[t,k]·w[n,k]. dst F32[T,N], x F32[T,K], w [N,K] of F32/BF16/F16.
	MatMul(dst, x, w *Tensor) error
	// RMSNorm: dst[r,:] = w ⊙ x[r,:] / sqrt(mean(x[r,:]²) + eps) for every row r of width len(w).
	// dst and x may be the same tensor; x's element count must be a multiple of len(w).
	RMSNorm(dst, x, w *Tensor, eps float32) error
	// QKNormRoPE works in place on packed qkv F32[T, QKVCols]: each q head (Heads of them) is
	// RMS-normalised with qw, each k head (KVHeads) with kw (skipped when qw/kw are nil), then the
	// first RotaryDim dims of every q and k head are rotated by the row's position (b.Pos):
	// x' = x·cos(pos·f) + rotate_half(x)·sin(pos·f), f_i = theta^(-2i/RotaryDim). v is untouched.
	QKNormRoPE(qkv, qw, kw *Tensor, b *Batch, p AttnParams) error
	// Attention stores the k and v heads of every row of qkv into its sequence's cache at layer
	// `layer` and the row's position, then for each row at position p and each q head h computes
	// out[t, h·D:(h+1)·D] = Σ_j softmax_j(q·K_j/√D)·V_j over the cached keys j of kv head
	// h/(Heads/KVHeads) with j < min(Pos+Len, (p/BlockLen+1)·BlockLen) of its sequence.
	// out F32[T, Heads·HeadDim].
	Attention(out, qkv *Tensor, b *Batch, layer int, p AttnParams) error
	// SwiGLU: dst[t,i] = silu(gu[t,i])·gu[t,I+i]. dst F32[T,I], gu F32[T,2I].
	SwiGLU(dst, gu *Tensor) error
	// Add: dst += x (same shapes, F32).
	Add(dst, x *Tensor) error
	// Router: s = sigmoid(logits) (F32[T,E]); the choice uses s+bias (bias F32[E] or nil):
	// groups of E/NGroup experts score the sum of their top-2, the TopKGroup best groups are kept,
	// and the TopK best experts among them are chosen (descending; ties to the lower id). weights
	// are the chosen raw s, normalised to sum 1 when Norm, times Scale. ids I32[T,TopK],
	// weights F32[T,TopK]. allowed (nil or host []bool of length E) masks experts out of the choice.
	Router(ids, weights, logits, bias *Tensor, allowed []bool, p RouterParams) error
	// ExpertsFFN: dst[t,:] = Σ_j weights[t,j]·FFN_{ids[t,j]}(x[t,:]) over the choices whose expert
	// set holds; FFN_e(x) = Down_e·(silu(G_e·x) ⊙ (U_e·x)). Ids < 0 are skipped.
	// dst F32[T,H] (overwritten), x F32[T,H], ids I32[T,k], weights F32[T,k].
	ExpertsFFN(dst, x, ids, weights *Tensor, set *ExpertSet) error
	// GatherRows: dst[i,:] = src[idx[i],:]. idx I32[n].
	GatherRows(dst, src, idx *Tensor) error
	// LMHead computes the logits l = w·x[t] (w [V,H]) row by row without keeping them, and writes
	// the K largest (ids I32[T,K], descending, ties to the lower id; logits F32[T,K], raw) and
	// lse F32[T] = log Σ_v exp(l_v·invTemp). With invTemp 1, exp(logits[t,0] - lse[t]) is the
	// softmax probability of the argmax.
	LMHead(ids, logits, lse, x, w *Tensor, invTemp float32) error
}

// CheckShape returns an ErrShape-wrapped error naming op and arg when t's shape is not want.
// A negative entry in want matches any size.
func CheckShape(op, arg string, t *Tensor, want ...int) error {
	if t == nil {
		return fmt.Errorf("%s: %s is nil: %w", op, arg, ErrShape)
	}
	if len(t.Shape) != len(want) {
		return fmt.Errorf("%s: %s has shape %v, want %v: %w", op, arg, t.Shape, want, ErrShape)
	}
	for i, w := range want {
		if w >= 0 && t.Shape[i] != w {
			return fmt.Errorf("%s: %s has shape %v, want %v: %w", op, arg, t.Shape, want, ErrShape)
		}
	}
	return nil
}

// CheckDType returns an ErrDType-wrapped error when t's dtype is not one of want.
func CheckDType(op, arg string, t *Tensor, want ...DType) error {
	if t == nil {
		return fmt.Errorf("%s: %s is nil: %w", op, arg, ErrShape)
	}
	for _, w := range want {
		if t.DType == w {
			return nil
		}
	}
	return fmt.Errorf("%s: %s is %v, want one of %v: %w", op, arg, t.DType, want, ErrDType)
}

// Randomizer is implemented by backends that can fill a tensor with random values in place,
// without a host copy: benchmarks of the real model shapes use it for random weights.
// Values are uniform in [-scale, scale) (for integer tensors: in [0, scale)), from seed.
type Randomizer interface {
	FillRandom(t *Tensor, seed uint64, scale float32) error
}

// ReadMeter is implemented by backends that can measure the rate at which they stream-read
// their own memory (the bound of a weight-reading step): ReadBandwidth reads every byte of a
// buffer of n bytes reps times (after one untimed pass) and returns the bytes read per second.
// A read pass only reads (a copy would move every byte twice).
type ReadMeter interface {
	ReadBandwidth(n int64, reps int) (bytesPerS float64, err error)
}

// Stager is implemented by backends whose host transfers can run asynchronously, in stream
// order, through pinned (page-locked) host memory: attnd's expert hop downloads the routed rows
// and uploads their sums through it. Pinned buffers are scarce and slow to allocate: keep them.
type Stager interface {
	// AllocPinned returns n bytes of pinned host memory, zeroed, for FreePinned (or Close) to free.
	AllocPinned(n int) ([]byte, error)
	// FreePinned frees a buffer AllocPinned returned (the whole slice it returned).
	FreePinned(p []byte) error
	// DownloadAsync enqueues a copy of t's bytes into dst, which must lie in a pinned buffer and
	// hold exactly t's bytes; they are there once a later Sync returns.
	DownloadAsync(dst []byte, t *Tensor) error
	// UploadAsync enqueues a copy of src (in a pinned buffer, exactly t's bytes) into t, in order
	// with the ops around it; src must not change until a later Sync returns.
	UploadAsync(t *Tensor, src []byte) error
}

// Grapher is implemented by backends that can record a sequence of ops once and replay it
// (CUDA graphs). Capture runs fn with the ops recorded instead of run; the returned Graph
// replays them on the same tensors.
type Grapher interface {
	Capture(fn func() error) (Graph, error)
}

// SegmentGrapher is a Grapher whose recording can be cut: BeginCapture records the ops that
// follow instead of running them, EndCapture stops and returns them as a Graph. Between an End
// and the next Begin the caller does host work (transfers, a remote call): a step whose routed
// experts are remote is recorded as one graph per segment between its expert hops
// (model.Prepared).
type SegmentGrapher interface {
	Grapher
	BeginCapture() error
	EndCapture() (Graph, error)
}

// Graph is a recorded sequence of ops.
type Graph interface {
	Launch() error
	Close() error
}
