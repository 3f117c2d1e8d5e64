package cpu

import (
	"fmt"
	"math"
	"slices"

	"github.com/dlmesh/dlmesh/kernels"
)

// checkAttn validates the attention geometry.
func checkAttn(op string, p kernels.AttnParams) error {
	switch {
	case p.Heads <= 0 || p.KVHeads <= 0 || p.HeadDim <= 0:
		return fmt.Errorf("%s: heads %d, kv heads %d, head dim %d must be positive: %w", op, p.Heads, p.KVHeads, p.HeadDim, kernels.ErrShape)
	case p.Heads%p.KVHeads != 0:
		return fmt.Errorf("%s: heads %d not a multiple of kv heads %d: %w", op, p.Heads, p.KVHeads, kernels.ErrShape)
	case p.RotaryDim < 0 || p.RotaryDim > p.HeadDim || p.RotaryDim%2 != 0:
		return fmt.Errorf("%s: rotary dim %d must be even and in [0, %d]: %w", op, p.RotaryDim, p.HeadDim, kernels.ErrShape)
	case p.BlockLen <= 0:
		return fmt.Errorf("%s: block length %d must be positive: %w", op, p.BlockLen, kernels.ErrShape)
	}
	return nil
}

// NewCache implements kernels.Backend: a zeroed F32 tensor [layers, 2, KVHeads, capLen, HeadDim].
func (b *Backend) NewCache(layers, capLen int, p kernels.AttnParams) (*kernels.Tensor, error) {
	const op = "cpu: new cache"
	if layers <= 0 || capLen <= 0 || p.KVHeads <= 0 || p.HeadDim <= 0 {
		return nil, fmt.Errorf("%s: layers %d, capacity %d, kv heads %d, head dim %d must be positive: %w",
			op, layers, capLen, p.KVHeads, p.HeadDim, kernels.ErrShape)
	}
	if p.CacheDType != 0 && p.CacheDType != kernels.F32 {
		return nil, fmt.Errorf("%s: a %v cache: the CPU backend keeps its KV cache in F32: %w", op, p.CacheDType, kernels.ErrUnsupported)
	}
	return b.Alloc(kernels.F32, layers, 2, p.KVHeads, capLen, p.HeadDim)
}

// NewBatch implements kernels.Backend. The sequences must tile rows [0, Σ Len) without gaps or
// overlaps (in any order), have Pos ≥ 0 and Pos+Len within their cache's capacity.
func (b *Backend) NewBatch(seqs []kernels.Seq) (*kernels.Batch, error) {
	const op = "cpu: new batch"
	order := make([]int, len(seqs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, c int) int { return seqs[a].Row - seqs[c].Row })
	rows := 0
	for _, i := range order {
		s := seqs[i]
		if s.Row != rows || s.Len < 0 {
			return nil, fmt.Errorf("%s: seq %d covers rows [%d, %d), want rows contiguous from %d: %w", op, i, s.Row, s.Row+s.Len, rows, kernels.ErrShape)
		}
		if s.Pos < 0 {
			return nil, fmt.Errorf("%s: seq %d position %d is negative: %w", op, i, s.Pos, kernels.ErrShape)
		}
		if err := kernels.CheckShape(op, fmt.Sprintf("seqs[%d].Cache", i), s.Cache, -1, 2, -1, -1, -1); err != nil {
			return nil, err
		}
		if _, err := b.f32(op, fmt.Sprintf("seqs[%d].Cache", i), s.Cache); err != nil {
			return nil, err
		}
		if s.Pos+s.Len > s.Cache.Shape[3] {
			return nil, fmt.Errorf("%s: seq %d positions [%d, %d) exceed cache capacity %d: %w", op, i, s.Pos, s.Pos+s.Len, s.Cache.Shape[3], kernels.ErrShape)
		}
		rows += s.Len
	}
	pos := make([]int32, rows)
	for _, s := range seqs {
		for i := range s.Len {
			pos[s.Row+i] = int32(s.Pos + i)
		}
	}
	pt := &kernels.Tensor{DType: kernels.I32, Shape: []int{rows}, Storage: &store{i32: pos}}
	return &kernels.Batch{Seqs: slices.Clone(seqs), Rows: rows, Pos: pt}, nil
}

// FreeBatch implements kernels.Backend.
func (b *Backend) FreeBatch(bt *kernels.Batch) {
	if bt != nil {
		b.Free(bt.Pos)
	}
}

// batchPos validates a batch against T rows and returns its positions.
func (b *Backend) batchPos(op string, bt *kernels.Batch, T int) ([]int32, error) {
	if bt == nil {
		return nil, fmt.Errorf("%s: batch is nil: %w", op, kernels.ErrShape)
	}
	if bt.Rows != T {
		return nil, fmt.Errorf("%s: batch has %d rows, tensor %d: %w", op, bt.Rows, T, kernels.ErrShape)
	}
	if err := kernels.CheckShape(op, "batch.Pos", bt.Pos, T); err != nil {
		return nil, err
	}
	return b.i32(op, "batch.Pos", bt.Pos)
}

// ropeFreqs returns inv_freq[i] = 1 / theta^(2i/rd) for i < rd/2, rounded like torch's float32
// `1.0 / (theta ** (arange(0, rd, 2).float() / rd))`.
func ropeFreqs(theta float64, rd int) []float32 {
	f := make([]float32, rd/2)
	for i := range f {
		e := float32(2*i) / float32(rd)
		f[i] = 1 / float32(math.Pow(float64(float32(theta)), float64(e)))
	}
	return f
}

// QKNormRoPE implements kernels.Backend.
func (b *Backend) QKNormRoPE(qkv, qw, kw *kernels.Tensor, bt *kernels.Batch, p kernels.AttnParams) error {
	const op = "cpu: qknorm rope"
	if err := checkAttn(op, p); err != nil {
		return err
	}
	if err := kernels.CheckShape(op, "qkv", qkv, -1, p.QKVCols()); err != nil {
		return err
	}
	T, W, D := qkv.Shape[0], p.QKVCols(), p.HeadDim
	data, err := b.f32w(op, "qkv", qkv)
	if err != nil {
		return err
	}
	pos, err := b.batchPos(op, bt, T)
	if err != nil {
		return err
	}
	norm := func(arg string, t *kernels.Tensor) ([]float32, error) {
		if t == nil {
			return nil, nil
		}
		v, err := b.vec(op, arg, t)
		if err != nil {
			return nil, err
		}
		if v.cols != D {
			return nil, fmt.Errorf("%s: %s has %d elements, want head dim %d: %w", op, arg, v.cols, D, kernels.ErrShape)
		}
		w := make([]float32, D)
		for i := range w {
			w[i] = v.at(i)
		}
		return w, nil
	}
	qn, err := norm("qw", qw)
	if err != nil {
		return err
	}
	kn, err := norm("kw", kw)
	if err != nil {
		return err
	}
	freqs := ropeFreqs(p.RopeTheta, p.RotaryDim)
	half := p.RotaryDim / 2
	b.parallelRange(T, max(1, rowGrain/W), func(lo, hi int) {
		cs := make([]float32, 2*half)
		for t := lo; t < hi; t++ {
			fp := float32(pos[t])
			for i, f := range freqs {
				a := float64(fp * f)
				cs[i], cs[half+i] = float32(math.Cos(a)), float32(math.Sin(a))
			}
			row := data[t*W : (t+1)*W]
			for h := range p.Heads + p.KVHeads {
				x := row[h*D : (h+1)*D]
				w := qn
				if h >= p.Heads {
					w = kn
				}
				if w != nil {
					rmsRow(x, x, w, p.Eps)
				}
				for i := range half {
					c, s := cs[i], cs[half+i]
					x1, x2 := x[i], x[half+i]
					x[i] = x1*c + (-x2)*s
					x[half+i] = x2*c + x1*s
				}
			}
		}
	})
	return nil
}

// Attention implements kernels.Backend.
func (b *Backend) Attention(out, qkv *kernels.Tensor, bt *kernels.Batch, layer int, p kernels.AttnParams) error {
	const op = "cpu: attention"
	if err := checkAttn(op, p); err != nil {
		return err
	}
	if err := kernels.CheckShape(op, "qkv", qkv, -1, p.QKVCols()); err != nil {
		return err
	}
	T, W, D := qkv.Shape[0], p.QKVCols(), p.HeadDim
	if err := kernels.CheckShape(op, "out", out, T, p.Heads*D); err != nil {
		return err
	}
	q, err := b.f32(op, "qkv", qkv)
	if err != nil {
		return err
	}
	od, err := b.f32w(op, "out", out)
	if err != nil {
		return err
	}
	if overlaps(od, q) {
		return fmt.Errorf("%s: out aliases qkv: %w", op, kernels.ErrShape)
	}
	if _, err := b.batchPos(op, bt, T); err != nil {
		return err
	}
	caches := make([][]float32, len(bt.Seqs))
	maxLen := 0
	for i, s := range bt.Seqs {
		arg := fmt.Sprintf("batch.Seqs[%d].Cache", i)
		if s.Row < 0 || s.Len < 0 || s.Row+s.Len > T || s.Pos < 0 {
			return fmt.Errorf("%s: seq %d rows [%d, %d) at position %d outside %d rows: %w", op, i, s.Row, s.Row+s.Len, s.Pos, T, kernels.ErrShape)
		}
		if err := kernels.CheckShape(op, arg, s.Cache, -1, 2, p.KVHeads, -1, D); err != nil {
			return err
		}
		if layer < 0 || layer >= s.Cache.Shape[0] {
			return fmt.Errorf("%s: layer %d outside the cache's %d layers: %w", op, layer, s.Cache.Shape[0], kernels.ErrShape)
		}
		if s.Pos+s.Len > s.Cache.Shape[3] {
			return fmt.Errorf("%s: seq %d positions [%d, %d) exceed cache capacity %d: %w", op, i, s.Pos, s.Pos+s.Len, s.Cache.Shape[3], kernels.ErrShape)
		}
		if caches[i], err = b.f32w(op, arg, s.Cache); err != nil {
			return err
		}
		maxLen = max(maxLen, s.Pos+s.Len)
	}
	KVH, H := p.KVHeads, p.Heads
	// Store every row's k and v first: the rows of a sequence see each other within a block.
	for i, s := range bt.Seqs {
		capLen := s.Cache.Shape[3]
		lc := caches[i][layer*2*KVH*capLen*D : (layer+1)*2*KVH*capLen*D]
		for r := range s.Len {
			row := q[(s.Row+r)*W : (s.Row+r+1)*W]
			at := s.Pos + r
			for h := range KVH {
				copy(lc[(h*capLen+at)*D:(h*capLen+at+1)*D], row[(H+h)*D:(H+h+1)*D])
				copy(lc[((KVH+h)*capLen+at)*D:((KVH+h)*capLen+at+1)*D], row[(H+KVH+h)*D:(H+KVH+h+1)*D])
			}
		}
	}
	// Attend: one task per (sequence row, q head).
	type job struct{ seq, row int }
	jobs := make([]job, 0, T)
	for i, s := range bt.Seqs {
		for r := range s.Len {
			jobs = append(jobs, job{i, r})
		}
	}
	scale := float32(1 / math.Sqrt(float64(D)))
	group := H / KVH
	b.parallel(len(jobs)*H, maxLen+D, func(task int, scratch []float32) {
		jb, h := jobs[task/H], task%H
		s := bt.Seqs[jb.seq]
		capLen := s.Cache.Shape[3]
		at := s.Pos + jb.row
		n := min(s.Pos+s.Len, (at/p.BlockLen+1)*p.BlockLen)
		t := s.Row + jb.row
		kvh := h / group
		lc := caches[jb.seq][layer*2*KVH*capLen*D:]
		keys := lc[kvh*capLen*D : (kvh*capLen+n)*D]
		vals := lc[(KVH+kvh)*capLen*D : ((KVH+kvh)*capLen+n)*D]
		attendRow(od[t*H*D+h*D:t*H*D+(h+1)*D], q[t*W+h*D:t*W+(h+1)*D], keys, vals, n, scale, scratch)
	})
	return nil
}

// attendRow computes dst = Σ_j softmax_j(q·k_j·scale)·v_j over n keys (rows of D = len(q)),
// with the scores in scratch (≥ n floats) and the weighted sum accumulated in float32.
//
//go:norace
func attendRow(dst, q, keys, vals []float32, n int, scale float32, scratch []float32) {
	D := len(q)
	clear(dst)
	if n == 0 {
		return
	}
	sc := scratch[:n]
	m := float32(math.Inf(-1))
	j := 0
	for ; j+4 <= n; j += 4 {
		a0, a1, a2, a3 := dot1x4(q, keys[j*D:(j+1)*D], keys[(j+1)*D:(j+2)*D], keys[(j+2)*D:(j+3)*D], keys[(j+3)*D:(j+4)*D])
		sc[j], sc[j+1], sc[j+2], sc[j+3] = a0*scale, a1*scale, a2*scale, a3*scale
	}
	for ; j < n; j++ {
		sc[j] = dot(q, keys[j*D:(j+1)*D]) * scale
	}
	for _, v := range sc {
		m = max(m, v)
	}
	var sum float64
	for j, v := range sc {
		e := float32(expNonPos(float64(v - m)))
		sc[j] = e
		sum += float64(e)
	}
	inv := float32(1 / sum)
	for j := range sc {
		sc[j] *= inv
	}
	accumRows(dst[:D], vals[:n*D], sc, D)
}

// accumRows adds w[j]·rows[j·ld : j·ld+len(dst)] to dst for j < len(w), in increasing j for
// every element (fused multiply-adds on the SIMD path, except for the last len(dst)%8 columns).
//
//go:norace
func accumRows(dst, rows, w []float32, ld int) {
	D := len(dst)
	if len(w) == 0 || D == 0 {
		return
	}
	_ = rows[(len(w)-1)*ld+D-1]
	d0 := 0
	if useSIMD {
		d0 = D &^ 7
		if d0 > 0 {
			accumRowsAVX(&dst[0], &rows[0], &w[0], len(w), d0, ld)
		}
	}
	if d0 == D {
		return
	}
	for j, a := range w {
		v := rows[j*ld+d0 : j*ld+D]
		for d := range v {
			dst[d0+d] += a * v[d]
		}
	}
}
