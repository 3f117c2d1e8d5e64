package diffusion

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/dlmesh/dlmesh/internal/fixtures"
)

// below returns the largest float32 that is not greater than v.
func below(v float64) float32 {
	f := float32(v)
	if float64(f) > v {
		f = math.Nextafter32(f, float32(math.Inf(-1)))
	}
	return f
}

// TestReplayReferenceTraces drives State through every recorded reference run without a model:
// each step's predictions are synthesised so that the reference rule reproduces the recorded
// step (single unmasks through the forced path, with ties against later positions; untouched
// decoded positions alternately predicting their own token or another one at exactly the edit
// threshold), and the state must then agree on every step, on where blocks end, on the number
// of forwards and on the output.
func TestReplayReferenceTraces(t *testing.T) {
	fx := fixtures.LoadGen(t)
	if len(fx.Cases) == 0 {
		t.Fatal("fixture has no cases")
	}
	for ci, c := range fx.Cases {
		t.Run(fmt.Sprintf("%d-%s", ci, c.Mode), func(t *testing.T) {
			p := mustPreset(t, c.Mode, nil)
			p.GenLen, p.BlockLen = c.GenLength, c.BlockLength
			mp := c.ModeParams
			if len(mp) != 3 || *mp[0] != p.TauMask || (mp[1] == nil) != p.EditOff ||
				(mp[1] != nil && *mp[1] != p.TauEdit) || int(*mp[2]) != p.MaxPostSteps {
				t.Fatalf("mode %s params %v disagree with the preset %+v", c.Mode, mp, p)
			}
			st, err := NewState(c.PromptIDs, p, fx.MaskID, fx.EOSID)
			if err != nil {
				t.Fatal(err)
			}
			n := len(c.PromptIDs)
			for k, tr := range c.Trace {
				if st.Done() {
					t.Fatalf("step %d: state done early", k)
				}
				lo, hi := st.Block()
				if tr.Block != st.BlockIndex() {
					t.Fatalf("step %d: state at block %d, trace at %d", k, st.BlockIndex(), tr.Block)
				}
				cur := st.Tokens()[lo:hi]
				forced := len(tr.Unmasked) == 1
				fp := below(p.TauMask)
				preds := make([]Pred, hi-lo)
				for i := range preds {
					pos := lo + i
					switch {
					case pos < n:
						preds[i] = Pred{ID: 4242, Prob: 1} // ignored
					case slices.Contains(tr.Unmasked, pos):
						preds[i] = Pred{ID: tr.Tokens[i], Prob: 0.99}
						if forced {
							preds[i].Prob = fp
						}
					case cur[i] == fx.MaskID:
						preds[i] = Pred{ID: 4242, Prob: 0}
						if forced && pos > tr.Unmasked[0] {
							preds[i].Prob = fp // a tie: the lowest position must win
						}
					case slices.Contains(tr.Edited, pos):
						preds[i] = Pred{ID: tr.Tokens[i], Prob: 0.99}
					case i%2 == 0:
						preds[i] = Pred{ID: cur[i], Prob: 0.99}
					default:
						preds[i] = Pred{ID: cur[i] + 1, Prob: below(p.TauEdit)}
						if p.EditOff {
							preds[i].Prob = 1
						}
					}
				}
				res, err := st.Step(preds)
				if err != nil {
					t.Fatalf("step %d: %v", k, err)
				}
				if !slices.Equal(res.Unmasked, tr.Unmasked) || !slices.Equal(res.Edited, tr.Edited) ||
					!slices.Equal(res.Tokens, tr.Tokens) {
					t.Fatalf("step %d: got unmasked %v edited %v tokens %v\nwant %v %v %v",
						k, res.Unmasked, res.Edited, res.Tokens, tr.Unmasked, tr.Edited, tr.Tokens)
				}
				if res.HasMargin != (tr.MinMargin != nil) {
					t.Errorf("step %d: has margin %v, trace %v", k, res.HasMargin, tr.MinMargin)
				}
				last := k == len(c.Trace)-1
				wantBlockDone := last || c.Trace[k+1].Block != tr.Block
				if res.BlockDone != wantBlockDone || res.Done != last {
					t.Fatalf("step %d: blockDone %v done %v, want %v %v", k, res.BlockDone, res.Done, wantBlockDone, last)
				}
			}
			if !st.Done() || st.Forwards() != c.Forwards || len(c.Trace) != c.Forwards {
				t.Fatalf("done %v forwards %d, want %d (trace %d)", st.Done(), st.Forwards(), c.Forwards, len(c.Trace))
			}
			// The fixture's ids are the reference's whole window; a request returns its first gen_length.
			wantIDs := c.IDs[:min(len(c.IDs), c.GenLength)]
			if got := st.Output(); !slices.Equal(got, wantIDs) {
				t.Fatalf("output %v\nwant %v", got, wantIDs)
			}
			want := FinishStop
			if len(wantIDs) == c.GenLength {
				want = FinishLength
			}
			if st.FinishReason() != want {
				t.Errorf("reason %q, want %q", st.FinishReason(), want)
			}
		})
	}
}
