package cpu

import (
	"fmt"
	"math"

	"github.com/dlmesh/dlmesh/kernels"
)

// lmChunk is how many vocabulary rows one LMHead task scores.
const lmChunk = 512

// LMHead implements kernels.Backend. The vocabulary is cut into chunks; each task widens one
// chunk of w a tile at a time, scores every row of x against it and keeps, per row, a top-K and
// an online log-sum-exp (running max m and Σ exp(l·invTemp - m)). The per-chunk results are
// merged in chunk order. No [T, V] logits are ever held.
func (b *Backend) LMHead(ids, logits, lse, x, w *kernels.Tensor, invTemp float32) error {
	const op = "cpu: lm head"
	if err := kernels.CheckShape(op, "x", x, -1, -1); err != nil {
		return err
	}
	T, H := x.Shape[0], x.Shape[1]
	wm, err := b.weight(op, "w", w, -1, H)
	if err != nil {
		return err
	}
	V := wm.rows
	if err := kernels.CheckShape(op, "ids", ids, T, -1); err != nil {
		return err
	}
	K := ids.Shape[1]
	if K < 1 || K > V {
		return fmt.Errorf("%s: top-k %d outside [1, %d]: %w", op, K, V, kernels.ErrShape)
	}
	if err := kernels.CheckShape(op, "logits", logits, T, K); err != nil {
		return err
	}
	if err := kernels.CheckShape(op, "lse", lse, T); err != nil {
		return err
	}
	xd, err := b.f32(op, "x", x)
	if err != nil {
		return err
	}
	id, err := b.i32w(op, "ids", ids)
	if err != nil {
		return err
	}
	lg, err := b.f32w(op, "logits", logits)
	if err != nil {
		return err
	}
	ls, err := b.f32w(op, "lse", lse)
	if err != nil {
		return err
	}
	if T == 0 {
		return nil
	}

	chunk := lmChunk
	for chunk > 64 && (V+chunk-1)/chunk < 4*b.workers {
		chunk /= 2
	}
	nChunks := (V + chunk - 1) / chunk
	nb := tileRows(H)
	// Per chunk and row: K (id, logit) pairs, then m and s.
	tops := make([]topK, nChunks*T)
	idSlab, valSlab := make([]int32, len(tops)*K), make([]float32, len(tops)*K)
	for i := range tops {
		tops[i] = topK{ids: idSlab[i*K : (i+1)*K], vals: valSlab[i*K : (i+1)*K], m: math.Inf(-1)}
	}
	b.parallel(nChunks, nb*H+T*nb, func(c int, buf []float32) {
		wt, sc := buf[:nb*H], buf[nb*H:]
		v0, v1 := c*chunk, min(V, (c+1)*chunk)
		st := tops[c*T : (c+1)*T]
		for n0 := v0; n0 < v1; n0 += nb {
			n1 := min(v1, n0+nb)
			rows := wm.rowsF32(n0, n1, wt)
			gemmTile(sc, n1-n0, 0, xd, T, H, rows, n1-n0)
			for t := range T {
				st[t].add(sc[t*(n1-n0):(t+1)*(n1-n0)], n0, invTemp)
			}
		}
	})
	for t := range T {
		acc := &tops[t]
		for c := 1; c < nChunks; c++ {
			acc.merge(&tops[c*T+t])
		}
		copy(id[t*K:(t+1)*K], acc.ids)
		copy(lg[t*K:(t+1)*K], acc.vals)
		ls[t] = float32(acc.m + math.Log(acc.s))
	}
	return nil
}

// topK keeps the K largest (value, id) pairs in descending order (ties to the lower id) and
// the online log-sum-exp of the values times invTemp: lse = m + log(s).
type topK struct {
	ids  []int32
	vals []float32
	n    int
	m, s float64
}

// better reports whether (v, id) ranks before (w, jd).
func better(v float32, id int32, w float32, jd int32) bool {
	return v > w || (v == w && id < jd)
}

// push offers one candidate.
func (q *topK) push(v float32, id int32) {
	k := len(q.ids)
	if q.n == k && !better(v, id, q.vals[k-1], q.ids[k-1]) {
		return
	}
	i := min(q.n, k-1)
	for i > 0 && better(v, id, q.vals[i-1], q.ids[i-1]) {
		q.vals[i], q.ids[i] = q.vals[i-1], q.ids[i-1]
		i--
	}
	q.vals[i], q.ids[i] = v, id
	q.n = min(q.n+1, k)
}

// add offers the logits l of ids id0, id0+1, ….
func (q *topK) add(l []float32, id0 int, invTemp float32) {
	k := len(q.ids)
	cm := math.Inf(-1)
	for i, v := range l {
		if q.n < k || v > q.vals[k-1] {
			q.push(v, int32(id0+i))
		}
		cm = max(cm, float64(v*invTemp))
	}
	if math.IsInf(cm, -1) || math.IsNaN(cm) {
		if math.IsNaN(cm) {
			q.m, q.s = math.NaN(), math.NaN()
		}
		return
	}
	if cm > q.m {
		q.s *= math.Exp(q.m - cm)
		q.m = cm
	}
	var s float64
	for _, v := range l {
		s += expNonPos(float64(v*invTemp) - q.m)
	}
	q.s += s
}

// merge folds o into q.
func (q *topK) merge(o *topK) {
	for i := range o.n {
		q.push(o.vals[i], o.ids[i])
	}
	switch {
	case o.s == 0 && !math.IsNaN(o.m):
	case q.s == 0 && !math.IsNaN(q.m):
		q.m, q.s = o.m, o.s
	case o.m > q.m:
		q.s = q.s*math.Exp(q.m-o.m) + o.s
		q.m = o.m
	default:
		q.s += o.s * math.Exp(o.m-q.m)
	}
}
