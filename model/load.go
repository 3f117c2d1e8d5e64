package model

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/dlmesh/dlmesh/kernels"
)

// Weights is the attention part of the model: everything but the routed experts.
type Weights struct {
	Embed, FinalNorm, LMHead *kernels.Tensor
	Layers                   []*Layer
}

// Layer holds one decoder layer's non-routed weights.
type Layer struct {
	InNorm, QKV, QNorm, KNorm, Dense, PostNorm *kernels.Tensor
	MLP                                        *kernels.Expert // dense FFN (layers < first_k_dense_replace)
	Gate, Bias                                 *kernels.Tensor // router weight [E,H] and expert bias [E] (nil when absent)
	Shared                                     *kernels.Expert // shared expert (MoE layers, nil when none)
}

// ExpertWeights is a subset of the routed experts, for every MoE layer.
type ExpertWeights struct {
	IDs    []int                      // held expert ids, ascending
	Layers map[int]*kernels.ExpertSet // MoE layer index → its held experts (indexed by global id)
}

// Holds reports whether expert e is held.
func (w *ExpertWeights) Holds(e int) bool {
	i := sort.SearchInts(w.IDs, e)
	return i < len(w.IDs) && w.IDs[i] == e
}

// LoadOptions selects which parts of the checkpoint to load.
type LoadOptions struct {
	Attention bool  // the attention part
	Experts   []int // routed expert ids to load (every MoE layer); nil or empty = none
	// Progress, when set, is called after each tensor with the bytes loaded so far and the total.
	Progress func(done, total int64)
	// F32Weights widens the attention part's bf16/f16 matrices to float32 on load. A backend
	// that rounds activations to bf16 for bf16 GEMMs (CUDA) then computes those in float32:
	// the exact-parity mode for small models. Routed experts stay as stored.
	F32Weights bool
	// ExpertActDType is the precision of the routed experts' activations on backends that have
	// a choice (kernels.ExpertSet.ActDType): 0 or F32 exact, BF16 rounded once (the precision
	// of the dense bf16 GEMMs; CUDA then does half the expert tensor-core work).
	ExpertActDType kernels.DType
}

// SetExpertActDType changes the precision of the held routed experts' activations (see
// LoadOptions.ExpertActDType); steps prepared or captured before keep the old one.
func (m *Model) SetExpertActDType(dt kernels.DType) error {
	if err := (LoadOptions{ExpertActDType: dt}).validate(); err != nil {
		return err
	}
	if m.Experts != nil {
		for _, set := range m.Experts.Layers {
			set.ActDType = dt
		}
	}
	return nil
}

// SetKVDType sets the element type of the KV caches NewCache makes from now on (see KVDType).
// A type the backend cannot hold is refused now, not at the first cache: with the attention part
// loaded it makes a one-position cache to find out (and then keeps the old type).
func (m *Model) SetKVDType(dt kernels.DType) error {
	old := m.KVDType
	m.KVDType = dt
	if dt == 0 || dt == kernels.F32 || m.W == nil {
		return nil
	}
	c, err := m.NewCache(1)
	if err != nil {
		m.KVDType = old
		return err
	}
	c.Free()
	return nil
}

// validate reports options no backend can honour.
func (o LoadOptions) validate() error {
	switch o.ExpertActDType {
	case 0, kernels.F32, kernels.BF16:
		return nil
	}
	return fmt.Errorf("model: load options: expert activation dtype %v (want F32 or BF16)", o.ExpertActDType)
}

// AllExperts returns the ids 0..n-1.
func AllExperts(n int) []int {
	ids := make([]int, n)
	for i := range ids {
		ids[i] = i
	}
	return ids
}

// Model is a loaded llada2_moe model (or a part of one) on one backend.
type Model struct {
	Cfg     *Config
	Be      kernels.Backend
	W       *Weights       // nil when the attention part is not loaded
	Experts *ExpertWeights // nil when no routed experts are loaded
	// KVDType is the element type of the KV caches NewCache makes: 0 or F32 (exact), or BF16
	// on backends that support it (half the cache memory and bandwidth).
	KVDType kernels.DType
	ckpt    *Checkpoint
	owned   []*kernels.Tensor
}

// Load reads config.json and the checkpoint in dir and uploads the selected parts to be.
func Load(ctx context.Context, dir string, be kernels.Backend, opts LoadOptions) (*Model, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	ck, err := OpenCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	m := &Model{Cfg: cfg, Be: be, ckpt: ck}
	l := &loader{m: m, ck: ck, opts: opts}
	if err := l.plan(); err != nil {
		m.Close()
		return nil, err
	}
	if opts.Attention {
		if m.W, err = l.attention(ctx); err != nil {
			m.Close()
			return nil, err
		}
	}
	if len(opts.Experts) > 0 {
		if m.Experts, err = l.experts(ctx, opts.Experts); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// Close frees every tensor the model uploaded and unmaps the checkpoint.
func (m *Model) Close() error {
	for _, t := range m.owned {
		m.Be.Free(t)
	}
	m.owned = nil
	if m.ckpt != nil {
		err := m.ckpt.Close()
		m.ckpt = nil
		return err
	}
	return nil
}

type loader struct {
	m           *Model
	ck          *Checkpoint
	opts        LoadOptions
	done, total int64
}

var weightTypes = []kernels.DType{kernels.BF16, kernels.F16, kernels.F32}

// plan sums the bytes that will be loaded, for the progress callback.
func (l *loader) plan() error {
	c := l.m.Cfg
	var names []string
	if l.opts.Attention {
		names = append(names, "model.word_embeddings.weight", "model.norm.weight", "lm_head.weight")
		for i := 0; i < c.Layers; i++ {
			names = append(names, l.layerNames(i)...)
		}
	}
	for _, e := range l.opts.Experts {
		if e < 0 || e >= c.Experts {
			return fmt.Errorf("model: expert %d out of range [0, %d)", e, c.Experts)
		}
		for _, i := range c.MoELayers() {
			for _, p := range []string{"gate_proj", "up_proj", "down_proj"} {
				names = append(names, fmt.Sprintf("model.layers.%d.mlp.experts.%d.%s.weight", i, e, p))
			}
		}
	}
	for _, n := range names {
		ti, err := l.ck.Tensor(n)
		if err != nil {
			return err
		}
		l.total += int64(len(ti.Data))
	}
	return nil
}

func (l *loader) layerNames(i int) []string {
	c := l.m.Cfg
	p := fmt.Sprintf("model.layers.%d.", i)
	n := []string{p + "input_layernorm.weight", p + "attention.query_key_value.weight", p + "attention.dense.weight", p + "post_attention_layernorm.weight"}
	if c.UseQKNorm {
		n = append(n, p+"attention.query_layernorm.weight", p+"attention.key_layernorm.weight")
	}
	if !c.IsMoELayer(i) {
		return append(n, p+"mlp.gate_proj.weight", p+"mlp.up_proj.weight", p+"mlp.down_proj.weight")
	}
	n = append(n, p+"mlp.gate.weight")
	if c.ExpertBias {
		n = append(n, p+"mlp.gate.expert_bias")
	}
	if c.SharedExperts > 0 {
		n = append(n, p+"mlp.shared_experts.gate_proj.weight", p+"mlp.shared_experts.up_proj.weight", p+"mlp.shared_experts.down_proj.weight")
	}
	return n
}

func (l *loader) tensor(ctx context.Context, name string, dts []kernels.DType, shape ...int) (*kernels.Tensor, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ti, err := l.ck.Expect(name, dts, shape...)
	if err != nil {
		return nil, err
	}
	dt, raw := ti.DType, ti.Data
	if l.opts.F32Weights && len(ti.Shape) == 2 {
		dt, raw = widen(dt, raw)
	}
	t, err := l.m.Be.Load(dt, ti.Shape, raw)
	if err != nil {
		return nil, fmt.Errorf("model: upload %s: %w", name, err)
	}
	l.m.owned = append(l.m.owned, t)
	l.progress(int64(len(ti.Data)))
	return t, nil
}

// widen converts bf16/f16 little-endian data to float32; other dtypes pass through.
func widen(dt kernels.DType, raw []byte) (kernels.DType, []byte) {
	var conv func(uint16) float32
	switch dt {
	case kernels.BF16:
		conv = kernels.BF16ToF32
	case kernels.F16:
		conv = kernels.F16ToF32
	default:
		return dt, raw
	}
	out := make([]byte, 2*len(raw))
	for i := 0; i+1 < len(raw); i += 2 {
		binary.LittleEndian.PutUint32(out[2*i:], math.Float32bits(conv(binary.LittleEndian.Uint16(raw[i:]))))
	}
	return kernels.F32, out
}

func (l *loader) progress(n int64) {
	l.done += n
	if l.opts.Progress != nil {
		l.opts.Progress(l.done, l.total)
	}
}

// ffn loads a SwiGLU FFN with gate and up concatenated into one [2I, H] matrix.
func (l *loader) ffn(ctx context.Context, prefix string, inter int, routed bool) (*kernels.Expert, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := l.m.Cfg.Hidden
	g, err := l.ck.Expect(prefix+"gate_proj.weight", weightTypes, inter, h)
	if err != nil {
		return nil, err
	}
	u, err := l.ck.Expect(prefix+"up_proj.weight", []kernels.DType{g.DType}, inter, h)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, 0, len(g.Data)+len(u.Data))
	raw = append(append(raw, g.Data...), u.Data...)
	dt := g.DType
	if l.opts.F32Weights && !routed {
		dt, raw = widen(dt, raw)
	}
	gu, err := l.m.Be.Load(dt, []int{2 * inter, h}, raw)
	if err != nil {
		return nil, fmt.Errorf("model: upload %sgate_up: %w", prefix, err)
	}
	l.m.owned = append(l.m.owned, gu)
	l.progress(int64(len(g.Data) + len(u.Data)))
	save := l.opts.F32Weights
	l.opts.F32Weights = save && !routed
	down, err := l.tensor(ctx, prefix+"down_proj.weight", weightTypes, h, inter)
	l.opts.F32Weights = save
	if err != nil {
		return nil, err
	}
	return &kernels.Expert{GateUp: gu, Down: down}, nil
}

func (l *loader) attention(ctx context.Context) (*Weights, error) {
	c := l.m.Cfg
	w := &Weights{Layers: make([]*Layer, c.Layers)}
	var err error
	if w.Embed, err = l.tensor(ctx, "model.word_embeddings.weight", weightTypes, c.Vocab, c.Hidden); err != nil {
		return nil, err
	}
	for i := 0; i < c.Layers; i++ {
		if w.Layers[i], err = l.layer(ctx, i); err != nil {
			return nil, err
		}
	}
	if w.FinalNorm, err = l.tensor(ctx, "model.norm.weight", weightTypes, c.Hidden); err != nil {
		return nil, err
	}
	if w.LMHead, err = l.tensor(ctx, "lm_head.weight", weightTypes, c.Vocab, c.Hidden); err != nil {
		return nil, err
	}
	return w, nil
}

func (l *loader) layer(ctx context.Context, i int) (*Layer, error) {
	c := l.m.Cfg
	p := fmt.Sprintf("model.layers.%d.", i)
	ly := &Layer{}
	var err error
	load := func(dst **kernels.Tensor, name string, shape ...int) {
		if err == nil {
			*dst, err = l.tensor(ctx, p+name, weightTypes, shape...)
		}
	}
	qkv := (c.Heads + 2*c.KVHeads) * c.HeadDim
	load(&ly.InNorm, "input_layernorm.weight", c.Hidden)
	load(&ly.QKV, "attention.query_key_value.weight", qkv, c.Hidden)
	if c.UseQKNorm {
		load(&ly.QNorm, "attention.query_layernorm.weight", c.HeadDim)
		load(&ly.KNorm, "attention.key_layernorm.weight", c.HeadDim)
	}
	load(&ly.Dense, "attention.dense.weight", c.Hidden, c.Heads*c.HeadDim)
	load(&ly.PostNorm, "post_attention_layernorm.weight", c.Hidden)
	if err != nil {
		return nil, err
	}
	if !c.IsMoELayer(i) {
		ly.MLP, err = l.ffn(ctx, p+"mlp.", c.Intermediate, false)
		return ly, err
	}
	load(&ly.Gate, "mlp.gate.weight", c.Experts, c.Hidden)
	if c.ExpertBias {
		load(&ly.Bias, "mlp.gate.expert_bias", c.Experts)
	}
	if err != nil {
		return nil, err
	}
	if c.SharedExperts > 0 {
		ly.Shared, err = l.ffn(ctx, p+"mlp.shared_experts.", c.MoEIntermediate*c.SharedExperts, false)
	}
	return ly, err
}

func (l *loader) experts(ctx context.Context, ids []int) (*ExpertWeights, error) {
	c := l.m.Cfg
	held := append([]int(nil), ids...)
	sort.Ints(held)
	for i := 1; i < len(held); i++ {
		if held[i] == held[i-1] {
			return nil, fmt.Errorf("model: expert %d listed twice", held[i])
		}
	}
	ew := &ExpertWeights{IDs: held, Layers: map[int]*kernels.ExpertSet{}}
	for _, i := range c.MoELayers() {
		set := &kernels.ExpertSet{Experts: make([]*kernels.Expert, c.Experts), ActDType: l.opts.ExpertActDType}
		for _, e := range held {
			x, err := l.ffn(ctx, fmt.Sprintf("model.layers.%d.mlp.experts.%d.", i, e), c.MoEIntermediate, true)
			if err != nil {
				return nil, err
			}
			set.Experts[e] = x
		}
		ew.Layers[i] = set
	}
	return ew, nil
}

// ErrNoAttention is returned by Step on a model loaded without its attention part.
var ErrNoAttention = errors.New("model: attention part not loaded")

// NewRandom builds a model of shape cfg with random weights on be (for benchmarks of the real
// shapes without their checkpoints). A backend implementing kernels.Randomizer fills the
// weights in place (no host copies); otherwise they are generated on the host.
func NewRandom(cfg *Config, be kernels.Backend, opts LoadOptions, seed uint64) (*Model, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Model{Cfg: cfg, Be: be}
	r := &randLoader{m: m, seed: seed}
	c := cfg
	if opts.Attention {
		w := &Weights{Layers: make([]*Layer, c.Layers)}
		w.Embed = r.t(0.5, c.Vocab, c.Hidden)
		for i := range w.Layers {
			ly := &Layer{
				InNorm: r.ones(c.Hidden), PostNorm: r.ones(c.Hidden),
				QKV:   r.t(scaleFor(c.Hidden), (c.Heads+2*c.KVHeads)*c.HeadDim, c.Hidden),
				Dense: r.t(scaleFor(c.Heads*c.HeadDim), c.Hidden, c.Heads*c.HeadDim),
			}
			if c.UseQKNorm {
				ly.QNorm, ly.KNorm = r.ones(c.HeadDim), r.ones(c.HeadDim)
			}
			if !c.IsMoELayer(i) {
				ly.MLP = r.ffn(c.Intermediate)
			} else {
				ly.Gate = r.t(scaleFor(c.Hidden), c.Experts, c.Hidden)
				if c.ExpertBias {
					ly.Bias = r.zeros(c.Experts)
				}
				if c.SharedExperts > 0 {
					ly.Shared = r.ffn(c.MoEIntermediate * c.SharedExperts)
				}
			}
			w.Layers[i] = ly
		}
		w.FinalNorm = r.ones(c.Hidden)
		w.LMHead = r.t(scaleFor(c.Hidden), c.Vocab, c.Hidden)
		m.W = w
	}
	if len(opts.Experts) > 0 {
		ew := &ExpertWeights{IDs: append([]int(nil), opts.Experts...), Layers: map[int]*kernels.ExpertSet{}}
		sort.Ints(ew.IDs)
		for _, i := range c.MoELayers() {
			set := &kernels.ExpertSet{Experts: make([]*kernels.Expert, c.Experts), ActDType: opts.ExpertActDType}
			for _, e := range ew.IDs {
				set.Experts[e] = r.ffn(c.MoEIntermediate)
			}
			ew.Layers[i] = set
		}
		m.Experts = ew
	}
	if r.err != nil {
		m.Close()
		return nil, r.err
	}
	return m, nil
}

func scaleFor(fanIn int) float32 {
	s := float32(1.7320508) / float32(math.Sqrt(float64(fanIn))) // uniform with variance 1/fanIn
	return s
}

type randLoader struct {
	m    *Model
	seed uint64
	err  error
}

func (r *randLoader) t(scale float32, shape ...int) *kernels.Tensor {
	if r.err != nil {
		return nil
	}
	r.seed++
	be := r.m.Be
	var t *kernels.Tensor
	if rz, ok := be.(kernels.Randomizer); ok {
		t, r.err = be.Alloc(kernels.BF16, shape...)
		if r.err == nil {
			r.err = rz.FillRandom(t, r.seed, scale)
		}
	} else {
		n := 1
		for _, s := range shape {
			n *= s
		}
		rng := rand.New(rand.NewPCG(r.seed, 0x9e3779b97f4a7c15))
		raw := make([]byte, 2*n)
		for i := 0; i < n; i++ {
			b := kernels.F32ToBF16((rng.Float32()*2 - 1) * scale)
			raw[2*i], raw[2*i+1] = byte(b), byte(b>>8)
		}
		t, r.err = be.Load(kernels.BF16, shape, raw)
	}
	if r.err == nil {
		r.m.owned = append(r.m.owned, t)
	}
	return t
}

func (r *randLoader) fill(v float32, dt kernels.DType, n int) *kernels.Tensor {
	if r.err != nil {
		return nil
	}
	var raw []byte
	switch dt {
	case kernels.BF16:
		raw = make([]byte, 2*n)
		b := kernels.F32ToBF16(v)
		for i := 0; i < n; i++ {
			raw[2*i], raw[2*i+1] = byte(b), byte(b>>8)
		}
	default:
		raw = make([]byte, 4*n) // zeros only
	}
	t, err := r.m.Be.Load(dt, []int{n}, raw)
	r.err = err
	if err == nil {
		r.m.owned = append(r.m.owned, t)
	}
	return t
}

func (r *randLoader) ones(n int) *kernels.Tensor  { return r.fill(1, kernels.BF16, n) }
func (r *randLoader) zeros(n int) *kernels.Tensor { return r.fill(0, kernels.F32, n) }

func (r *randLoader) ffn(inter int) *kernels.Expert {
	h := r.m.Cfg.Hidden
	return &kernels.Expert{GateUp: r.t(scaleFor(h), 2*inter, h), Down: r.t(scaleFor(inter), h, inter)}
}
