package diffusion

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// fuzzSetup derives a small request and a deterministic prediction source from fuzz inputs.
// Tokens are 0..8 with EOS 8 and mask 9; probabilities are drawn uniformly or pinned to the
// thresholds, 0 and 1 so that boundary comparisons and ties happen often.
func fuzzSetup(seed uint64, mode, bl, gen, plen, post uint8) (prompt []int32, p Params, predict func(x []int32, lo, hi int) []Pred) {
	const mask, eos = 9, 8
	p, _ = Preset(Presets[int(mode)%len(Presets)])
	p.BlockLen = 1 + int(bl)%8
	p.GenLen = 1 + int(gen)%24
	if post&0x80 != 0 {
		p.MaxPostSteps = int(post) % 5
	}
	r := rand.New(rand.NewPCG(seed, 1))
	if mode&0x10 != 0 {
		p.TauMask = []float64{0.1, 0.5, 1}[r.IntN(3)]
		p.TauEdit = []float64{0, 0.5, 1}[r.IntN(3)]
	}
	prompt = make([]int32, 1+int(plen)%12)
	for i := range prompt {
		prompt[i] = int32(r.IntN(9)) // may hold EOS, never the mask
	}
	probs := []float32{0, 1, float32(p.TauMask), float32(p.TauEdit), 0.5}
	predict = func(x []int32, lo, hi int) []Pred {
		preds := make([]Pred, hi-lo)
		for i := range preds {
			id := int32(r.IntN(9))
			if r.IntN(3) == 0 {
				id = x[lo+i] // often agree with the current token
				if id == mask {
					id = int32(r.IntN(9))
				}
			}
			prob := r.Float32()
			if r.IntN(3) == 0 {
				prob = probs[r.IntN(len(probs))]
			}
			preds[i] = Pred{ID: id, Prob: prob}
		}
		return preds
	}
	return prompt, p, predict
}

// checkPolicy runs one request through State and through the transliterated reference with the
// same predictions, checks the invariants along the way and compares the two runs.
func checkPolicy(t *testing.T, seed uint64, mode, bl, gen, plen, post uint8) {
	t.Helper()
	const mask, eos = 9, 8
	prompt, p, predict := fuzzSetup(seed, mode, bl, gen, plen, post)
	wantOut, wantFwd, wantTrace := refGenerate(prompt, p, mask, eos, predict)
	_, _, predict = fuzzSetup(seed, mode, bl, gen, plen, post) // same stream again

	st, err := NewState(prompt, p, mask, eos)
	if err != nil {
		t.Fatalf("NewState(%v, %+v): %v", prompt, p, err)
	}
	n := len(prompt)
	stepsInBlock, k := 0, 0
	for !st.Done() {
		lo, hi := st.Block()
		before := slices.Clone(st.Tokens())
		masks := 0
		for _, tk := range before[lo:hi] {
			if tk == mask {
				masks++
			}
		}
		res, err := st.Step(predict(before, lo, hi))
		if err != nil {
			t.Fatalf("step %d: %v", k, err)
		}
		after := st.Tokens()
		if !slices.Equal(after[:n], prompt) {
			t.Fatalf("step %d: prompt changed: %v", k, after[:n])
		}
		if !slices.Equal(after[:lo], before[:lo]) || !slices.Equal(after[hi:], before[hi:]) {
			t.Fatalf("step %d: a position outside the block [%d,%d) changed", k, lo, hi)
		}
		if masks > 0 && len(res.Unmasked) == 0 {
			t.Fatalf("step %d: %d masks and nothing unmasked", k, masks)
		}
		for _, pos := range res.Unmasked {
			if before[pos] != mask || after[pos] == mask {
				t.Fatalf("step %d: unmasked %d: %d -> %d", k, pos, before[pos], after[pos])
			}
		}
		for _, pos := range res.Edited {
			if p.EditOff || pos < n || before[pos] == mask || after[pos] == before[pos] {
				t.Fatalf("step %d: edited %d: %d -> %d (n %d)", k, pos, before[pos], after[pos], n)
			}
		}
		stepsInBlock++
		if stepsInBlock > p.BlockLen+p.MaxPostSteps {
			t.Fatalf("block %d: %d steps, over block_length + max_post_steps", res.Block, stepsInBlock)
		}
		if res.BlockDone {
			stepsInBlock = 0
		}
		if k >= len(wantTrace) {
			t.Fatalf("step %d: the reference stopped after %d", k, len(wantTrace))
		}
		w := wantTrace[k]
		if res.Block != w.Block || !slices.Equal(res.Unmasked, w.Unmasked) || !slices.Equal(res.Edited, w.Edited) ||
			!slices.Equal(res.Tokens, w.Tokens) || res.HasMargin != w.HasMargin || res.MinMargin != w.MinMargin {
			t.Fatalf("step %d: got %+v\nreference %+v", k, res, w)
		}
		k++
	}
	out := st.Output()
	if slices.Contains(out, mask) {
		t.Fatalf("output holds the mask: %v", out)
	}
	if st.Forwards() != wantFwd || !slices.Equal(out, wantOut) {
		t.Fatalf("forwards %d output %v, reference %d %v", st.Forwards(), out, wantFwd, wantOut)
	}
	if len(out) > p.GenLen {
		t.Fatalf("output of %d tokens, over gen_length %d", len(out), p.GenLen)
	}
	switch st.FinishReason() {
	case FinishStop:
		if !slices.Contains(st.Tokens()[n:n+p.GenLen], eos) {
			t.Fatalf("stop finish without EOS in the first gen_length positions")
		}
	case FinishLength:
		lo, hi := st.Block()
		if hi != len(st.Tokens()) && !slices.Contains(st.Tokens()[max(lo, n):hi], eos) {
			t.Fatalf("length finish before the last block without EOS")
		}
		if len(out) != p.GenLen {
			t.Fatalf("length finish with %d tokens, want gen_length %d", len(out), p.GenLen)
		}
	default:
		t.Fatalf("reason %q", st.FinishReason())
	}
}

func FuzzPolicy(f *testing.F) {
	f.Add(uint64(1), uint8(0), uint8(3), uint8(10), uint8(5), uint8(0))
	f.Add(uint64(2), uint8(1), uint8(1), uint8(23), uint8(0), uint8(0x81))
	f.Add(uint64(3), uint8(2), uint8(7), uint8(3), uint8(11), uint8(0))
	f.Add(uint64(4), uint8(0x10), uint8(4), uint8(15), uint8(2), uint8(0x83))
	f.Fuzz(func(t *testing.T, seed uint64, mode, bl, gen, plen, post uint8) {
		checkPolicy(t, seed, mode, bl, gen, plen, post)
	})
}

// TestPolicyRandom runs the fuzz body over many random inputs on every go test.
func TestPolicyRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 42))
	u8 := func() uint8 { return uint8(r.Uint32()) }
	for range 3000 {
		checkPolicy(t, r.Uint64(), u8(), u8(), u8(), u8(), u8())
	}
}
