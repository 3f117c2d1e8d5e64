package diffusion

import (
	"errors"
	"math"
	"slices"
	"testing"

	"github.com/dlmesh/dlmesh/errdefs"
)

const (
	tMask int32 = 99
	tEOS  int32 = 98
)

func pr(id int32, prob float32) Pred { return Pred{ID: id, Prob: prob} }

func mustPreset(tb testing.TB, name string, mod func(*Params)) Params {
	tb.Helper()
	p, err := Preset(name)
	if err != nil {
		tb.Fatal(err)
	}
	if mod != nil {
		mod(&p)
	}
	return p
}

func blockLen(bl, gen int) func(*Params) {
	return func(p *Params) { p.BlockLen, p.GenLen = bl, gen }
}

type wantStep struct {
	preds            []Pred
	unmasked, edited []int
	tokens           []int32 // nil: not checked
	blockDone, done  bool
}

func TestStepSequences(t *testing.T) {
	cases := []struct {
		name   string
		preset string
		mod    func(*Params)
		prompt []int32
		steps  []wantStep
		output []int32
		reason string
	}{
		{
			name: "forced unmask takes the most confident, lowest index on ties", preset: "q", mod: blockLen(4, 4),
			prompt: []int32{1, 2, 3, 4},
			steps: []wantStep{
				{preds: []Pred{pr(10, .3), pr(11, .6), pr(12, .6), pr(13, .1)}, unmasked: []int{5}, tokens: []int32{tMask, 11, tMask, tMask}},
				{preds: []Pred{pr(10, .2), pr(11, .99), pr(12, .2), pr(13, .2)}, unmasked: []int{4}, tokens: []int32{10, 11, tMask, tMask}},
				{preds: []Pred{pr(10, .9), pr(11, .9), pr(12, .75), pr(13, .3)}, unmasked: []int{6}},
				{preds: []Pred{pr(10, .9), pr(11, .9), pr(12, .9), pr(13, .8)}, unmasked: []int{7}, tokens: []int32{10, 11, 12, 13}},
				{preds: []Pred{pr(10, .99), pr(11, .99), pr(12, .99), pr(13, .99)}, blockDone: true, done: true},
			},
			output: []int32{10, 11, 12, 13}, reason: FinishLength,
		},
		{
			name: "thresholds are strictly greater", preset: "s", mod: blockLen(4, 4),
			prompt: []int32{1, 2, 3, 4},
			steps: []wantStep{
				{preds: []Pred{pr(10, .5), pr(11, .5), pr(12, .75), pr(13, .5)}, unmasked: []int{6}},
				// tau_edit 0: a different token with probability exactly 0 is not an edit.
				{preds: []Pred{pr(10, .5), pr(11, .5), pr(20, 0), pr(13, .5)}, unmasked: []int{4}},
				{preds: []Pred{pr(10, 1), pr(11, .51), pr(20, 1e-6), pr(13, .6)}, unmasked: []int{5, 7}, edited: []int{6},
					tokens: []int32{10, 11, 20, 13}},
				{preds: []Pred{pr(10, 1), pr(11, 1), pr(20, 1), pr(13, 1)}, blockDone: true, done: true},
			},
			output: []int32{10, 11, 20, 13}, reason: FinishLength,
		},
		{
			name: "edits touch only decoded generated positions; prompt ends mid-block", preset: "q", mod: blockLen(4, 6),
			prompt: []int32{1, 2, 3, 4, 5, 6},
			steps: []wantStep{
				{preds: []Pred{pr(30, 1), pr(31, 1), pr(10, .9), pr(11, .2)}, unmasked: []int{6}, tokens: []int32{5, 6, 10, tMask}},
				{preds: []Pred{pr(30, 1), pr(31, 1), pr(12, .9), pr(11, .9)}, unmasked: []int{7}, edited: []int{6},
					tokens: []int32{5, 6, 12, 11}},
				// tau_edit 0.5: a different token at exactly 0.5 is not an edit.
				{preds: []Pred{pr(30, 1), pr(31, 1), pr(12, .9), pr(13, .5)}, blockDone: true, tokens: []int32{5, 6, 12, 11}},
				{preds: []Pred{pr(14, .9), pr(15, .9), pr(16, .9), pr(17, .9)}, unmasked: []int{8, 9, 10, 11}},
				{preds: []Pred{pr(14, .9), pr(15, .4), pr(16, .9), pr(18, .6)}, edited: []int{11}},
				{preds: []Pred{pr(14, .9), pr(15, .4), pr(16, .9), pr(18, .6)}, blockDone: true, done: true},
			},
			output: []int32{12, 11, 14, 15, 16, 18}, reason: FinishLength,
		},
		{
			name: "v20 never edits and ends when the last mask is filled", preset: "v20", mod: blockLen(4, 4),
			prompt: []int32{1, 2, 3, 4},
			steps: []wantStep{
				{preds: []Pred{pr(10, .96), pr(11, .95), pr(12, .5), pr(13, .1)}, unmasked: []int{4}},
				{preds: []Pred{pr(20, 1), pr(11, .97), pr(12, .97), pr(13, .2)}, unmasked: []int{5, 6}},
				{preds: []Pred{pr(20, 1), pr(21, 1), pr(22, 1), pr(13, .3)}, unmasked: []int{7}, blockDone: true, done: true,
					tokens: []int32{10, 11, 12, 13}},
			},
			output: []int32{10, 11, 12, 13}, reason: FinishLength,
		},
		{
			name: "q post-edit loop stops after max_post_steps", preset: "q",
			mod:    func(p *Params) { p.BlockLen, p.GenLen, p.MaxPostSteps = 2, 2, 3 },
			prompt: []int32{1, 2},
			steps: []wantStep{
				{preds: []Pred{pr(10, .9), pr(11, .9)}, unmasked: []int{2, 3}},
				{preds: []Pred{pr(12, .9), pr(11, .9)}, edited: []int{2}},
				{preds: []Pred{pr(10, .9), pr(11, .9)}, edited: []int{2}},
				{preds: []Pred{pr(12, .9), pr(11, .9)}, edited: []int{2}, blockDone: true, done: true},
			},
			output: []int32{12, 11}, reason: FinishLength,
		},
		{
			name: "q post-edit loop stops at the first step without edits", preset: "q", mod: blockLen(2, 2),
			prompt: []int32{1, 2},
			steps: []wantStep{
				{preds: []Pred{pr(10, .9), pr(11, .9)}, unmasked: []int{2, 3}},
				{preds: []Pred{pr(12, .9), pr(11, .9)}, edited: []int{2}},
				{preds: []Pred{pr(10, .3), pr(13, .5)}, blockDone: true, done: true},
			},
			output: []int32{12, 11}, reason: FinishLength,
		},
		{
			name: "s with no post steps edits only while masks remain", preset: "s",
			mod:    func(p *Params) { p.BlockLen, p.GenLen, p.MaxPostSteps = 2, 2, 0 },
			prompt: []int32{1, 2},
			steps: []wantStep{
				{preds: []Pred{pr(10, .9), pr(11, .1)}, unmasked: []int{2}},
				{preds: []Pred{pr(12, .1), pr(11, .2)}, unmasked: []int{3}, edited: []int{2}, blockDone: true, done: true},
			},
			output: []int32{12, 11}, reason: FinishLength,
		},
		{
			name: "EOS in a finished block stops; output cut at the first EOS", preset: "q", mod: blockLen(4, 8),
			prompt: []int32{1, 2, 3, 4},
			steps: []wantStep{
				{preds: []Pred{pr(10, .9), pr(tEOS, .9), pr(12, .9), pr(tEOS, .9)}, unmasked: []int{4, 5, 6, 7}},
				{preds: []Pred{pr(10, .9), pr(tEOS, .9), pr(12, .9), pr(tEOS, .9)}, blockDone: true, done: true},
			},
			output: []int32{10}, reason: FinishStop,
		},
		{
			name: "EOS edited away before the block ends does not stop", preset: "q", mod: blockLen(2, 4),
			prompt: []int32{1, 2},
			steps: []wantStep{
				{preds: []Pred{pr(tEOS, .9), pr(11, .9)}, unmasked: []int{2, 3}},
				{preds: []Pred{pr(10, .9), pr(11, .9)}, edited: []int{2}},
				{preds: []Pred{pr(10, .9), pr(11, .9)}, blockDone: true},
				{preds: []Pred{pr(12, .9), pr(tEOS, .9)}, unmasked: []int{4, 5}},
				{preds: []Pred{pr(12, .9), pr(tEOS, .9)}, blockDone: true, done: true},
			},
			output: []int32{10, 11, 12}, reason: FinishStop,
		},
		{
			name: "EOS in the prompt part of the first block does not stop; window rounds up", preset: "v20", mod: blockLen(4, 4),
			prompt: []int32{1, tEOS},
			steps: []wantStep{
				{preds: []Pred{pr(50, 1), pr(51, 1), pr(10, .99), pr(11, .99)}, unmasked: []int{2, 3}, blockDone: true,
					tokens: []int32{1, tEOS, 10, 11}},
				{preds: []Pred{pr(12, .99), pr(13, .99), pr(14, .99), pr(15, .99)}, unmasked: []int{4, 5, 6, 7}, blockDone: true, done: true},
			},
			output: []int32{10, 11, 12, 13}, reason: FinishLength, // gen_length 4 of the 6 positions decoded
		},
		{
			name: "EOS after gen_length is decoded but not returned: length", preset: "v20", mod: blockLen(4, 2),
			prompt: []int32{1},
			steps: []wantStep{
				{preds: []Pred{pr(50, 1), pr(10, .99), pr(11, .99), pr(tEOS, .99)}, unmasked: []int{1, 2, 3}, blockDone: true, done: true,
					tokens: []int32{1, 10, 11, tEOS}},
			},
			output: []int32{10, 11}, reason: FinishLength,
		},
		{
			name: "EOS at the gen_length boundary: stop", preset: "v20", mod: blockLen(4, 3),
			prompt: []int32{1},
			steps: []wantStep{
				{preds: []Pred{pr(50, 1), pr(10, .99), pr(11, .99), pr(tEOS, .99)}, unmasked: []int{1, 2, 3}, blockDone: true, done: true,
					tokens: []int32{1, 10, 11, tEOS}},
			},
			output: []int32{10, 11}, reason: FinishStop,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := mustPreset(t, c.preset, c.mod)
			st, err := NewState(c.prompt, p, tMask, tEOS)
			if err != nil {
				t.Fatal(err)
			}
			for i, w := range c.steps {
				lo, hi := st.Block()
				before := slices.Clone(st.Tokens())
				res, err := st.Step(w.preds)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if res.Block != lo/p.BlockLen {
					t.Errorf("step %d: block %d, want %d", i, res.Block, lo/p.BlockLen)
				}
				if !slices.Equal(res.Unmasked, w.unmasked) || !slices.Equal(res.Edited, w.edited) {
					t.Errorf("step %d: unmasked %v edited %v, want %v %v", i, res.Unmasked, res.Edited, w.unmasked, w.edited)
				}
				if w.tokens != nil && !slices.Equal(res.Tokens, w.tokens) {
					t.Errorf("step %d: tokens %v, want %v", i, res.Tokens, w.tokens)
				}
				if res.BlockDone != w.blockDone || res.Done != w.done || st.Done() != w.done {
					t.Errorf("step %d: blockDone %v done %v (state %v), want %v %v", i, res.BlockDone, res.Done, st.Done(), w.blockDone, w.done)
				}
				if res.BlockDone != (res.Committed != nil) || (res.BlockDone && !slices.Equal(res.Committed, res.Tokens)) {
					t.Errorf("step %d: committed %v with blockDone %v, tokens %v", i, res.Committed, res.BlockDone, res.Tokens)
				}
				wantMargin, has := math.Inf(1), false
				for j := lo; j < hi; j++ {
					if before[j] == tMask {
						has = true
						wantMargin = min(wantMargin, math.Abs(float64(w.preds[j-lo].Prob)-p.TauMask))
					}
				}
				if res.HasMargin != has || (has && res.MinMargin != wantMargin) {
					t.Errorf("step %d: margin %v/%v, want %v/%v", i, res.MinMargin, res.HasMargin, wantMargin, has)
				}
			}
			if got := st.Output(); !slices.Equal(got, c.output) {
				t.Errorf("output %v, want %v", got, c.output)
			}
			if st.FinishReason() != c.reason || st.Forwards() != len(c.steps) {
				t.Errorf("reason %q forwards %d, want %q %d", st.FinishReason(), st.Forwards(), c.reason, len(c.steps))
			}
			// The same scripted predictions through the transliterated reference give the same run.
			k := 0
			out, fwd, _ := refGenerate(c.prompt, p, tMask, tEOS, func([]int32, int, int) []Pred {
				if k >= len(c.steps) {
					t.Fatalf("reference wants forward %d; script has %d", k+1, len(c.steps))
				}
				k++
				return c.steps[k-1].preds
			})
			if !slices.Equal(out, c.output) || fwd != len(c.steps) {
				t.Errorf("reference: output %v forwards %d", out, fwd)
			}
		})
	}
}

func TestStop(t *testing.T) {
	p := mustPreset(t, "v20", blockLen(2, 6))
	all := []Pred{pr(10, 1), pr(11, 1)}
	t.Run("at a block boundary", func(t *testing.T) {
		st, _ := NewState([]int32{1, 2, 3}, p, tMask, tEOS) // blocks [2,4) [4,6) [6,8) [8,10)
		res, err := st.Step(all)
		if err != nil || !res.BlockDone || res.Done {
			t.Fatalf("step: %+v %v", res, err)
		}
		st.Stop()
		if !st.Done() || st.FinishReason() != FinishStop || !slices.Equal(st.Output(), []int32{11}) {
			t.Fatalf("done %v reason %q output %v", st.Done(), st.FinishReason(), st.Output())
		}
		if _, err := st.Step(all); !errors.Is(err, ErrDone) {
			t.Fatalf("step after stop: %v", err)
		}
	})
	t.Run("mid-block drops the unfinished block", func(t *testing.T) {
		st, _ := NewState([]int32{1, 2, 3}, p, tMask, tEOS)
		st.Step(all)
		if res, _ := st.Step([]Pred{pr(12, 1), pr(13, .1)}); res.BlockDone {
			t.Fatal("block finished early")
		}
		st.Stop()
		if !slices.Equal(st.Output(), []int32{11}) {
			t.Fatalf("output %v", st.Output())
		}
	})
	t.Run("after done keeps the reason", func(t *testing.T) {
		st, _ := NewState([]int32{1}, mustPreset(t, "v20", blockLen(2, 1)), tMask, tEOS)
		if res, _ := st.Step(all); !res.Done {
			t.Fatal("not done")
		}
		st.Stop()
		if st.FinishReason() != FinishLength {
			t.Fatalf("reason %q", st.FinishReason())
		}
	})
}

func TestStepErrors(t *testing.T) {
	p := mustPreset(t, "q", blockLen(2, 2))
	for _, c := range []struct {
		name  string
		preds []Pred
	}{
		{"too few", []Pred{pr(1, 1)}},
		{"too many", []Pred{pr(1, 1), pr(1, 1), pr(1, 1)}},
		{"NaN", []Pred{pr(1, 1), pr(1, float32(math.NaN()))}},
		{"writes the mask", []Pred{pr(tMask, 1), pr(1, 1)}},
		{"writes a negative id", []Pred{pr(1, 1), pr(-3, .9)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, _ := NewState([]int32{1, 2}, p, tMask, tEOS)
			before := slices.Clone(st.Tokens())
			if _, err := st.Step(c.preds); !errors.Is(err, ErrInvalidPreds) {
				t.Fatalf("err %v, want ErrInvalidPreds", err)
			}
			if !slices.Equal(st.Tokens(), before) || st.Forwards() != 0 {
				t.Fatal("a failed step changed the state")
			}
		})
	}
	t.Run("new state", func(t *testing.T) {
		if _, err := NewState(nil, p, tMask, tEOS); !errors.Is(err, ErrInvalidPrompt) {
			t.Errorf("empty prompt: %v", err)
		}
		if _, err := NewState([]int32{1, tMask}, p, tMask, tEOS); !errors.Is(err, ErrInvalidPrompt) {
			t.Errorf("mask in prompt: %v", err)
		}
		bad := p
		bad.TauMask = 0
		if _, err := NewState([]int32{1}, bad, tMask, tEOS); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("bad params: %v", err)
		}
	})
}

func TestWindowLayout(t *testing.T) {
	p := mustPreset(t, "q", blockLen(4, 5))
	st, err := NewState([]int32{7, 8, 9, 10, 11, 12}, p, tMask, tEOS) // n 6, total ceil(11/4)*4 = 12
	if err != nil {
		t.Fatal(err)
	}
	want := []int32{7, 8, 9, 10, 11, 12, tMask, tMask, tMask, tMask, tMask, tMask}
	if lo, hi := st.Block(); !slices.Equal(st.Tokens(), want) || lo != 4 || hi != 8 || st.BlockIndex() != 1 {
		t.Fatalf("tokens %v block [%d,%d) #%d", st.Tokens(), lo, hi, st.BlockIndex())
	}
	if len(st.Output()) != 0 || st.Done() || st.FinishReason() != "" {
		t.Fatalf("fresh state: output %v done %v reason %q", st.Output(), st.Done(), st.FinishReason())
	}
}
