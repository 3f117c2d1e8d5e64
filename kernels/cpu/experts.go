package cpu

import (
	"fmt"

	"github.com/dlmesh/dlmesh/kernels"
)

// expertRows is the most rows of one expert computed by one task.
const expertRows = 32

// ExpertsFFN implements kernels.Backend. The (row, choice) pairs are grouped by expert; each
// task gathers up to expertRows rows of one expert, runs GateUp, SwiGLU and Down on them, and
// the results are summed into dst per row in choice order (so the result does not depend on
// scheduling).
func (b *Backend) ExpertsFFN(dst, x, ids, weights *kernels.Tensor, set *kernels.ExpertSet) error {
	const op = "cpu: experts ffn"
	if err := kernels.CheckShape(op, "x", x, -1, -1); err != nil {
		return err
	}
	T, H := x.Shape[0], x.Shape[1]
	if err := kernels.CheckShape(op, "ids", ids, T, -1); err != nil {
		return err
	}
	k := ids.Shape[1]
	if err := kernels.CheckShape(op, "weights", weights, T, k); err != nil {
		return err
	}
	if err := kernels.CheckShape(op, "dst", dst, T, H); err != nil {
		return err
	}
	if set == nil {
		return fmt.Errorf("%s: expert set is nil: %w", op, kernels.ErrShape)
	}
	xd, err := b.f32(op, "x", x)
	if err != nil {
		return err
	}
	id, err := b.i32(op, "ids", ids)
	if err != nil {
		return err
	}
	wt, err := b.f32(op, "weights", weights)
	if err != nil {
		return err
	}
	dd, err := b.f32w(op, "dst", dst)
	if err != nil {
		return err
	}
	if overlaps(dd, xd) {
		return fmt.Errorf("%s: dst aliases x: %w", op, kernels.ErrShape)
	}

	// Group the pairs by expert, validating each held expert once.
	type ffn struct {
		gu, down mat
		pairs    []int // indices t·k+j into ids
	}
	byExpert := map[int32]*ffn{}
	var order []int32
	I := 0
	for pi, e := range id {
		if e < 0 || int(e) >= len(set.Experts) || set.Experts[e] == nil {
			continue
		}
		f := byExpert[e]
		if f == nil {
			ex := set.Experts[e]
			gu, err := b.weight(op, fmt.Sprintf("expert %d GateUp", e), ex.GateUp, -1, H)
			if err != nil {
				return err
			}
			if gu.rows%2 != 0 {
				return fmt.Errorf("%s: expert %d GateUp has odd %d rows: %w", op, e, gu.rows, kernels.ErrShape)
			}
			down, err := b.weight(op, fmt.Sprintf("expert %d Down", e), ex.Down, H, gu.rows/2)
			if err != nil {
				return err
			}
			f = &ffn{gu: gu, down: down}
			byExpert[e] = f
			order = append(order, e)
			I = max(I, gu.rows/2)
		}
		f.pairs = append(f.pairs, pi)
	}

	// Tasks: chunks of at most expertRows pairs of one expert. out[pi] is that pair's FFN row.
	type task struct {
		f     *ffn
		pairs []int
	}
	var tasks []task
	for _, e := range order {
		f := byExpert[e]
		for lo := 0; lo < len(f.pairs); lo += expertRows {
			tasks = append(tasks, task{f, f.pairs[lo:min(len(f.pairs), lo+expertRows)]})
		}
	}
	out := make([][]float32, len(id))
	res := make([]float32, 0, func() int {
		n := 0
		for _, f := range byExpert {
			n += len(f.pairs)
		}
		return n * H
	}())
	// Give every pair its own output row in res (in task order).
	for _, tk := range tasks {
		for _, pi := range tk.pairs {
			res = res[:len(res)+H]
			out[pi] = res[len(res)-H:]
		}
	}
	scratch := expertRows*(H+3*I) + max(tileRows(H)*H, tileRows(I)*I)
	b.parallel(len(tasks), scratch, func(ti int, buf []float32) {
		tk := tasks[ti]
		n, I := len(tk.pairs), tk.f.gu.rows/2
		xs, buf := buf[:n*H], buf[n*H:]
		gu, buf := buf[:n*2*I], buf[n*2*I:]
		act, buf := buf[:n*I], buf[n*I:]
		for r, pi := range tk.pairs {
			t := pi / k
			copy(xs[r*H:(r+1)*H], xd[t*H:(t+1)*H])
		}
		matmulSerial(gu, xs, n, tk.f.gu, buf)
		for r := range n {
			swigluRow(act[r*I:(r+1)*I], gu[r*2*I:(r+1)*2*I])
		}
		// Down into a contiguous block, then hand each row to its pair.
		ys := xs // the gathered rows are no longer needed
		matmulSerial(ys, act, n, tk.f.down, buf)
		for r, pi := range tk.pairs {
			copy(out[pi], ys[r*H:(r+1)*H])
		}
	})
	b.parallelRange(T, max(1, rowGrain/max(H, 1)), func(lo, hi int) {
		for t := lo; t < hi; t++ {
			d := dd[t*H : (t+1)*H]
			clear(d)
			for j := range k {
				y := out[t*k+j]
				if y == nil {
					continue
				}
				w := wt[t*k+j]
				for i, v := range y {
					d[i] += w * v
				}
			}
		}
	})
	return nil
}
