package attnd

import (
	"errors"
	"fmt"
)

// ErrUncovered is returned when the router chose an expert that no expert group serves.
var ErrUncovered = errors.New("attnd: expert not served by any group")

// part is what one expert group receives for one MoE layer: the rows that chose at least one of
// its experts, with the other groups' choices set to -1 (weights kept, they are ignored).
type part struct {
	group   int
	rows    []int32   // row indices into the step's activations
	ids     []int32   // [len(rows)·k]
	weights []float32 // [len(rows)·k]
}

// split groups the rows of a routed step by expert group. ids and weights are [T·k] row-major;
// owner[e] is the group serving expert e (-1: none). A row is sent once to each group that holds
// any of its chosen experts; parts come back in group order, without empty groups.
//
// Reference: y[t] = Σ_j w[t,j]·FFN_{ids[t,j]}(x[t]) = Σ_g Σ_{j: owner(ids[t,j])=g} w[t,j]·FFN(x[t]).
func split(ids []int32, weights []float32, k int, owner []int, groups int) ([]part, error) {
	return splitInto(nil, ids, weights, k, owner, groups)
}

// splitInto is split reusing the parts (and their slices) of buf[:cap(buf)].
func splitInto(buf []part, ids []int32, weights []float32, k int, owner []int, groups int) ([]part, error) {
	if k <= 0 || len(ids)%k != 0 || len(weights) != len(ids) {
		return nil, fmt.Errorf("attnd: split: %d ids, %d weights, top_k %d", len(ids), len(weights), k)
	}
	parts := buf[:cap(buf)]
	if len(parts) < groups {
		parts = append(parts, make([]part, groups-len(parts))...)
	}
	parts = parts[:groups]
	for g := range parts {
		p := &parts[g]
		*p = part{group: g, rows: p.rows[:0], ids: p.ids[:0], weights: p.weights[:0]}
	}
	T := len(ids) / k
	var touchedBuf [64]bool
	touched := touchedBuf[:0]
	if groups <= len(touchedBuf) {
		touched = touchedBuf[:groups]
	} else {
		touched = make([]bool, groups)
	}
	for t := 0; t < T; t++ {
		clear(touched)
		row := ids[t*k : (t+1)*k]
		for _, e := range row {
			if e < 0 {
				continue
			}
			if int(e) >= len(owner) || owner[e] < 0 {
				return nil, fmt.Errorf("%w: row %d chose expert %d", ErrUncovered, t, e)
			}
			touched[owner[e]] = true
		}
		for g, ok := range touched {
			if !ok {
				continue
			}
			p := &parts[g]
			p.rows = append(p.rows, int32(t))
			for j, e := range row {
				if e >= 0 && owner[e] != g {
					e = -1
				}
				p.ids = append(p.ids, e)
				p.weights = append(p.weights, weights[t*k+j])
			}
		}
	}
	// Empty groups move to the end (keeping their slices for reuse); the others keep group order.
	n := 0
	for g := range parts {
		if len(parts[g].rows) > 0 {
			parts[n], parts[g] = parts[g], parts[n]
			n++
		}
	}
	return parts[:n], nil
}
