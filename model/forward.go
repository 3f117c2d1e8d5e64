package model

import (
	"context"
	"fmt"
	"math"

	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/kernels"
)

// Cache is one sequence's KV cache: every layer's K and V for positions [0, Cap).
type Cache struct {
	T   *kernels.Tensor
	Cap int
	// Len is the number of positions holding K/V written by a Step (the highest Pos+len fed).
	Len   int
	be    kernels.Backend
	dtype kernels.DType
}

// NewCache allocates a KV cache for a window of capLen positions.
func (m *Model) NewCache(capLen int) (*Cache, error) {
	if capLen <= 0 || capLen > m.Cfg.MaxPositions && m.Cfg.MaxPositions > 0 {
		return nil, fmt.Errorf("model: cache capacity %d out of range [1, %d]", capLen, m.Cfg.MaxPositions)
	}
	p := m.attnParams(0) // the cache's layout does not depend on the block length
	t, err := m.Be.NewCache(m.Cfg.Layers, capLen, p)
	if err != nil {
		return nil, fmt.Errorf("model: new cache: %w", err)
	}
	return &Cache{T: t, Cap: capLen, be: m.Be, dtype: p.CacheDType}, nil
}

// Free releases the cache's storage.
func (c *Cache) Free() {
	if c != nil && c.T != nil {
		c.be.Free(c.T)
		c.T = nil
	}
}

// StepSeq is one sequence of a Step.
type StepSeq struct {
	Cache   *Cache
	Pos     int     // position of Tokens[0]; every position before it must already be in the cache
	Tokens  []int32 // the tokens at [Pos, Pos+len(Tokens))
	OutRows int     // the last OutRows rows get LM-head results
	TopK    int     // candidates per output row (1 = argmax; 0 means 1)
	InvTemp float32 // 1/temperature for the log-sum-exp (0 means 1)
}

// StepOut is the LM-head result of one sequence: OutRows rows of TopK candidates.
type StepOut struct {
	TopK   int
	IDs    []int32   // [OutRows·TopK], descending logit
	Logits []float32 // [OutRows·TopK], raw
	LSE    []float32 // [OutRows], log Σ exp(logit·InvTemp)
}

// Prob is the softmax probability (at the step's temperature) of candidate j of row r.
func (o *StepOut) Prob(r, j int, invTemp float32) float32 {
	return float32(math.Exp(float64(o.Logits[r*o.TopK+j]*orOne(invTemp) - o.LSE[r])))
}

// ExpertRunner computes the routed experts of one MoE layer for the rows of a step.
type ExpertRunner interface {
	// Dispatch starts y[t] = Σ_j weights[t,j]·FFN_{ids[t,j]}(x[t]) for MoE layer `layer`; the
	// returned wait writes y into dst (F32[T,H]). The caller runs other work (the shared expert)
	// between the two, and does not modify x, ids or weights before wait returns.
	Dispatch(ctx context.Context, layer int, x, ids, weights *kernels.Tensor) (wait func(dst *kernels.Tensor) error, err error)
}

// LocalExperts runs the routed experts held by a model on its own backend.
type LocalExperts struct{ M *Model }

// Dispatch implements ExpertRunner; the work is enqueued at wait, in stream order.
func (l LocalExperts) Dispatch(_ context.Context, layer int, x, ids, weights *kernels.Tensor) (func(*kernels.Tensor) error, error) {
	if l.M.Experts == nil {
		return nil, fmt.Errorf("model: layer %d: no routed experts loaded", layer)
	}
	set := l.M.Experts.Layers[layer]
	if set == nil {
		return nil, fmt.Errorf("model: layer %d is not a MoE layer", layer)
	}
	return func(dst *kernels.Tensor) error { return l.M.Be.ExpertsFFN(dst, x, ids, weights, set) }, nil
}

// StepOptions are the per-step knobs that are not per sequence.
type StepOptions struct {
	Experts ExpertRunner // nil: LocalExperts{m}
	Allowed []bool       // experts the router may choose (nil: all); for degraded serving
}

func (m *Model) attnParams(blockLen int) kernels.AttnParams {
	c := m.Cfg
	return kernels.AttnParams{
		Heads: c.Heads, KVHeads: c.KVHeads, HeadDim: c.HeadDim, RotaryDim: c.RotaryDim,
		RopeTheta: c.RopeTheta, Eps: c.Eps, BlockLen: blockLen, CacheDType: m.KVDType,
	}
}

func (m *Model) routerParams() kernels.RouterParams {
	c := m.Cfg
	return kernels.RouterParams{TopK: c.TopK, NGroup: c.NGroup, TopKGroup: c.TopKGroup, Norm: c.NormTopK, Scale: c.RoutedScale}
}

// Step runs one forward over a batch of sequences with block length blockLen and returns, per
// sequence, the LM-head candidates of its last OutRows rows.
func (m *Model) Step(ctx context.Context, seqs []StepSeq, blockLen int, opt StepOptions) ([]StepOut, error) {
	pl, err := m.plan(seqs, blockLen)
	if err != nil {
		return nil, err
	}
	defer pl.free()
	if err := m.compute(ctx, pl, opt); err != nil {
		return nil, err
	}
	outs, err := pl.collect()
	if err != nil {
		return nil, err
	}
	pl.wrote()
	return outs, nil
}

// wrote records in the sequences' caches the positions a computed step wrote.
func (pl *stepPlan) wrote() {
	for _, s := range pl.seqs {
		if end := s.Pos + len(s.Tokens); end > s.Cache.Len {
			s.Cache.Len = end
		}
	}
}

// orOne is v, or 1 for 0: the default of a 1/temperature (StepSeq.InvTemp).
func orOne(v float32) float32 {
	if v == 0 {
		return 1
	}
	return v
}

// stepPlan is a validated step with its device buffers allocated and its inputs uploaded:
// compute enqueues only device work on it (so a backend can capture it as a graph), and collect
// downloads the results.
type stepPlan struct {
	m        *Model
	seqs     []StepSeq
	ks       []kernels.Seq
	rows     int
	blockLen int
	batch    *kernels.Batch
	f        *frame

	idT, x, h, tmp, routed, qkv, att  *kernels.Tensor
	gu, act, rlog, rid, rw, sgu, sact *kernels.Tensor
	heads                             []*headGroup
}

// headGroup is a set of sequences that share (TopK, InvTemp) at the LM head.
type headGroup struct {
	k         int
	inv       float32
	seqs      []int
	rows      int
	idx       *kernels.Tensor
	xo        *kernels.Tensor
	oid, olog *kernels.Tensor
	olse      *kernels.Tensor
}

// MaxTopK bounds StepSeq.TopK: the LM-head candidates one row may ask for.
const MaxTopK = 1024

// CheckSeq checks one sequence of a step against its cache and the vocabulary: what Step would
// refuse it for. A caller batching independent sequences checks each first, so that one bad
// sequence fails alone rather than the whole step. The error wraps errdefs.ErrInvalidArgument and
// names the field.
func (m *Model) CheckSeq(s StepSeq) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	switch {
	case s.Cache == nil || s.Cache.T == nil:
		return bad("no cache")
	case len(s.Tokens) == 0:
		return bad("no tokens")
	case s.Pos < 0 || s.Pos > s.Cache.Len:
		return bad("start_pos %d not in [0, %d] (the positions its cache holds)", s.Pos, s.Cache.Len)
	case s.Pos+len(s.Tokens) > s.Cache.Cap:
		return bad("tokens end at %d past the cache capacity %d", s.Pos+len(s.Tokens), s.Cache.Cap)
	case s.OutRows < 0 || s.OutRows > len(s.Tokens):
		return bad("out_rows %d not in [0, %d]", s.OutRows, len(s.Tokens))
	case s.TopK < 0 || s.TopK > MaxTopK:
		return bad("top_k %d not in [0, %d]", s.TopK, MaxTopK)
	case math.IsNaN(float64(s.InvTemp)) || math.IsInf(float64(s.InvTemp), 0) || s.InvTemp < 0:
		return bad("inv_temperature %v: want a finite value >= 0 (0 = 1)", s.InvTemp)
	}
	for j, t := range s.Tokens {
		if t < 0 || int(t) >= m.Cfg.Vocab {
			return bad("tokens[%d] = %d not in [0, %d)", j, t, m.Cfg.Vocab)
		}
	}
	return nil
}

func (m *Model) plan(seqs []StepSeq, blockLen int) (*stepPlan, error) {
	if m.W == nil {
		return nil, ErrNoAttention
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("model: step: no sequences: %w", errdefs.ErrInvalidArgument)
	}
	if blockLen <= 0 {
		return nil, fmt.Errorf("model: step: block length %d: %w", blockLen, errdefs.ErrInvalidArgument)
	}
	c, be := m.Cfg, m.Be
	ks := make([]kernels.Seq, len(seqs))
	var ids []int32
	for i, s := range seqs {
		if err := m.CheckSeq(s); err != nil {
			return nil, fmt.Errorf("model: step: sequence %d: %w", i, err)
		}
		ks[i] = kernels.Seq{Row: len(ids), Len: len(s.Tokens), Pos: s.Pos, Cache: s.Cache.T}
		ids = append(ids, s.Tokens...)
	}
	T := len(ids)
	pl := &stepPlan{m: m, seqs: seqs, ks: ks, rows: T, blockLen: blockLen, f: &frame{be: be}}
	batch, err := be.NewBatch(ks)
	if err != nil {
		return nil, fmt.Errorf("model: step batch: %w", err)
	}
	pl.batch = batch
	f := pl.f
	ap := m.attnParams(blockLen)
	H := c.Hidden
	pl.idT = f.alloc(kernels.I32, T)
	pl.x = f.alloc(kernels.F32, T, H)
	pl.h = f.alloc(kernels.F32, T, H)
	pl.tmp = f.alloc(kernels.F32, T, H)
	pl.qkv = f.alloc(kernels.F32, T, ap.QKVCols())
	pl.att = f.alloc(kernels.F32, T, c.Heads*c.HeadDim)
	if c.FirstKDense > 0 {
		pl.gu = f.alloc(kernels.F32, T, 2*c.Intermediate)
		pl.act = f.alloc(kernels.F32, T, c.Intermediate)
	}
	if c.FirstKDense < c.Layers {
		pl.routed = f.alloc(kernels.F32, T, H)
		pl.rlog = f.alloc(kernels.F32, T, c.Experts)
		pl.rid = f.alloc(kernels.I32, T, c.TopK)
		pl.rw = f.alloc(kernels.F32, T, c.TopK)
		if c.SharedExperts > 0 {
			si := c.MoEIntermediate * c.SharedExperts
			pl.sgu = f.alloc(kernels.F32, T, 2*si)
			pl.sact = f.alloc(kernels.F32, T, si)
		}
	}
	// LM-head groups: sequences asking for the same (TopK, InvTemp) share one call.
	byKey := map[[2]float32]*headGroup{}
	for i, s := range seqs {
		if s.OutRows == 0 {
			continue
		}
		k, inv := max(s.TopK, 1), orOne(s.InvTemp)
		key := [2]float32{float32(k), inv}
		g := byKey[key]
		if g == nil {
			g = &headGroup{k: k, inv: inv}
			byKey[key] = g
			pl.heads = append(pl.heads, g)
		}
		g.seqs = append(g.seqs, i)
		g.rows += s.OutRows
	}
	e := &errs{}
	for _, g := range pl.heads {
		var rows []int32
		for _, i := range g.seqs {
			first := ks[i].Row + len(seqs[i].Tokens) - seqs[i].OutRows
			for r := 0; r < seqs[i].OutRows; r++ {
				rows = append(rows, int32(first+r))
			}
		}
		g.idx = f.alloc(kernels.I32, g.rows)
		g.xo = f.alloc(kernels.F32, g.rows, H)
		g.oid = f.alloc(kernels.I32, g.rows, g.k)
		g.olog = f.alloc(kernels.F32, g.rows, g.k)
		g.olse = f.alloc(kernels.F32, g.rows)
		if f.err == nil {
			e.do(be.Upload(g.idx, rows))
		}
	}
	if f.err != nil {
		pl.free()
		return nil, fmt.Errorf("model: step alloc: %w", f.err)
	}
	e.do(be.Upload(pl.idT, ids))
	if e.err != nil {
		pl.free()
		return nil, fmt.Errorf("model: step upload: %w", e.err)
	}
	return pl, nil
}

func (pl *stepPlan) free() {
	pl.f.free()
	if pl.batch != nil {
		pl.m.Be.FreeBatch(pl.batch)
		pl.batch = nil
	}
}

// compute enqueues the forward of a planned step: embeddings, every layer, the final norm and
// the LM head. With a local expert runner it does no host work.
func (m *Model) compute(ctx context.Context, pl *stepPlan, opt StepOptions) error {
	c, be := m.Cfg, m.Be
	runner := opt.Experts
	if runner == nil {
		runner = LocalExperts{m}
	}
	ap := m.attnParams(pl.blockLen)
	rp := m.routerParams()
	x, h, tmp := pl.x, pl.h, pl.tmp
	e := &errs{}
	e.do(be.Embed(x, m.W.Embed, pl.idT))
	for li, ly := range m.W.Layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		e.do(be.RMSNorm(h, x, ly.InNorm, c.Eps))
		e.do(be.MatMul(pl.qkv, h, ly.QKV))
		e.do(be.QKNormRoPE(pl.qkv, ly.QNorm, ly.KNorm, pl.batch, ap))
		e.do(be.Attention(pl.att, pl.qkv, pl.batch, li, ap))
		e.do(be.MatMul(tmp, pl.att, ly.Dense))
		e.do(be.Add(x, tmp))
		e.do(be.RMSNorm(h, x, ly.PostNorm, c.Eps))
		if e.err != nil {
			return fmt.Errorf("model: layer %d attention: %w", li, e.err)
		}
		if ly.MLP != nil {
			e.do(be.MatMul(pl.gu, h, ly.MLP.GateUp))
			e.do(be.SwiGLU(pl.act, pl.gu))
			e.do(be.MatMul(tmp, pl.act, ly.MLP.Down))
			e.do(be.Add(x, tmp))
			if e.err != nil {
				return fmt.Errorf("model: layer %d dense mlp: %w", li, e.err)
			}
			continue
		}
		e.do(be.MatMul(pl.rlog, h, ly.Gate))
		e.do(be.Router(pl.rid, pl.rw, pl.rlog, ly.Bias, opt.Allowed, rp))
		if e.err != nil {
			return fmt.Errorf("model: layer %d router: %w", li, e.err)
		}
		wait, err := runner.Dispatch(ctx, li, h, pl.rid, pl.rw)
		if err != nil {
			return fmt.Errorf("model: layer %d experts: %w", li, err)
		}
		if ly.Shared != nil {
			e.do(be.MatMul(pl.sgu, h, ly.Shared.GateUp))
			e.do(be.SwiGLU(pl.sact, pl.sgu))
			e.do(be.MatMul(tmp, pl.sact, ly.Shared.Down))
			e.do(be.Add(x, tmp))
		}
		if err := wait(pl.routed); err != nil {
			return fmt.Errorf("model: layer %d experts: %w", li, err)
		}
		e.do(be.Add(x, pl.routed))
		if e.err != nil {
			return fmt.Errorf("model: layer %d moe: %w", li, e.err)
		}
	}
	for _, g := range pl.heads {
		e.do(be.GatherRows(g.xo, x, g.idx))
		e.do(be.RMSNorm(g.xo, g.xo, m.W.FinalNorm, c.Eps))
		e.do(be.LMHead(g.oid, g.olog, g.olse, g.xo, m.W.LMHead, g.inv))
	}
	if e.err != nil {
		return fmt.Errorf("model: lm head: %w", e.err)
	}
	return nil
}

// collect downloads the LM-head results of a computed step.
func (pl *stepPlan) collect() ([]StepOut, error) {
	be := pl.m.Be
	outs := make([]StepOut, len(pl.seqs))
	e := &errs{}
	for _, g := range pl.heads {
		hid := make([]int32, g.rows*g.k)
		hlog := make([]float32, g.rows*g.k)
		hlse := make([]float32, g.rows)
		e.do(be.Download(hid, g.oid))
		e.do(be.Download(hlog, g.olog))
		e.do(be.Download(hlse, g.olse))
		off := 0
		for _, i := range g.seqs {
			r := pl.seqs[i].OutRows
			outs[i] = StepOut{TopK: g.k, IDs: hid[off*g.k : (off+r)*g.k], Logits: hlog[off*g.k : (off+r)*g.k], LSE: hlse[off : off+r]}
			off += r
		}
	}
	if e.err != nil {
		return nil, fmt.Errorf("model: lm head download: %w", e.err)
	}
	return outs, nil
}

// frame tracks the temporaries of one step.
type frame struct {
	be  kernels.Backend
	ts  []*kernels.Tensor
	err error
}

func (f *frame) alloc(dt kernels.DType, shape ...int) *kernels.Tensor {
	if f.err != nil {
		return nil
	}
	t, err := f.be.Alloc(dt, shape...)
	if err != nil {
		f.err = err
		return nil
	}
	f.ts = append(f.ts, t)
	return t
}

func (f *frame) free() {
	for _, t := range f.ts {
		f.be.Free(t)
	}
	f.ts = nil
}

// errs keeps the first error of a chain of ops.
type errs struct{ err error }

func (e *errs) do(err error) {
	if e.err == nil && err != nil {
		e.err = err
	}
}

// Forward runs the whole window ids (block-causal over blocks of blockLen from position 0) in one
// forward, as the reference does, and returns the argmax and its probability at every position.
func (m *Model) Forward(ctx context.Context, ids []int32, blockLen int) (argmax []int32, prob []float32, err error) {
	cache, err := m.NewCache(len(ids))
	if err != nil {
		return nil, nil, err
	}
	defer cache.Free()
	outs, err := m.Step(ctx, []StepSeq{{Cache: cache, Tokens: ids, OutRows: len(ids), TopK: 1}}, blockLen, StepOptions{})
	if err != nil {
		return nil, nil, err
	}
	o := outs[0]
	prob = make([]float32, len(ids))
	for r := range prob {
		prob[r] = o.Prob(r, 0, 1)
	}
	return o.IDs, prob, nil
}
