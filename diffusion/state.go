package diffusion

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// Finish reasons reported by State.FinishReason, as OpenAI and Hugging Face name them.
const (
	// FinishStop: the output ends at EOS (a finished block held EOS within the first GenLen
	// generated positions), or the driver called Stop (a stop string matched).
	FinishStop = "stop"
	// FinishLength: GenLen tokens without EOS; the output is cut there (the window's last block
	// may hold more positions, decoded but not returned).
	FinishLength = "length"
)

var (
	// ErrInvalidPrompt: the prompt is empty or holds the mask token.
	ErrInvalidPrompt = errors.New("diffusion: invalid prompt")
	// ErrDone: Step was called on a finished request.
	ErrDone = errors.New("diffusion: request already done")
	// ErrInvalidPreds: Step got the wrong number of predictions, a NaN probability, or would
	// write the mask token or a negative id.
	ErrInvalidPreds = errors.New("diffusion: invalid predictions")
)

// Pred is the model's prediction for one block position: the chosen token (the argmax, or the
// sampled one) and its probability.
type Pred struct {
	ID   int32
	Prob float32
}

// StepResult describes what one Step did.
type StepResult struct {
	Block    int     // index of the block that was run
	Unmasked []int   // absolute positions unmasked by M2T, ascending
	Edited   []int   // absolute positions rewritten by T2T, ascending
	Tokens   []int32 // the block after the step (a copy)

	// MinMargin is min |prob - TauMask| over the positions that were masked before the step, as
	// the reference trace's min_margin; HasMargin is false when there were none.
	MinMargin float64
	HasMargin bool

	BlockDone bool    // the block is finished: no further forward runs for it
	Committed []int32 // when BlockDone: the final tokens of the block (a copy)
	Done      bool    // the request is finished (see State.FinishReason)
}

// State is the decoding state of one request: the window of prompt plus generation area, the
// current block and its post-edit counter. It is not safe for concurrent use.
type State struct {
	p             Params
	maskID, eosID int32
	n             int     // prompt length
	x             []int32 // the window
	b             int     // current block index
	nblocks       int
	post          int // post-edit steps of the current block, as the reference's post
	forwards      int
	done          bool
	reason        string
	end           int // Output reads x[n:end]
}

// NewState starts a request. It validates p, requires a non-empty prompt without the mask token,
// and lays out the window as the reference does: the prompt followed by masks up to
// ceil((len(prompt)+GenLen)/BlockLen)*BlockLen positions. The first block is the one holding
// position len(prompt) (index len(prompt)/BlockLen); prompt tokens that share it are never
// changed.
func NewState(prompt []int32, p Params, maskID, eosID int32) (*State, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if len(prompt) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrInvalidPrompt)
	}
	if i := slices.Index(prompt, maskID); i >= 0 {
		return nil, fmt.Errorf("%w: token %d is the mask token %d", ErrInvalidPrompt, i, maskID)
	}
	n, bl := len(prompt), p.BlockLen
	total := (n + p.GenLen + bl - 1) / bl * bl
	x := make([]int32, total)
	copy(x, prompt)
	for i := n; i < total; i++ {
		x[i] = maskID
	}
	p.StopStrings = slices.Clone(p.StopStrings)
	s := &State{p: p, maskID: maskID, eosID: eosID, n: n, x: x, b: n / bl, nblocks: total / bl, end: total}
	s.enterBlock()
	return s, nil
}

// Done reports whether the request is finished; Step must not be called after that.
func (s *State) Done() bool { return s.done }

// Block returns the absolute positions [lo, hi) of the current block (the last one run once the
// request is done).
func (s *State) Block() (lo, hi int) { return s.b * s.p.BlockLen, (s.b + 1) * s.p.BlockLen }

// BlockIndex returns the index of the current block (position lo / BlockLen).
func (s *State) BlockIndex() int { return s.b }

// Tokens returns the whole window; masked positions hold the mask token. The model runs on
// Tokens()[:hi]. The slice is the state's own: do not modify it or keep it across Step calls.
func (s *State) Tokens() []int32 { return s.x }

// Forwards returns the number of Step calls so far (one model forward each).
func (s *State) Forwards() int { return s.forwards }

// FinishReason returns FinishStop or FinishLength once Done, else "".
func (s *State) FinishReason() string { return s.reason }

// Params returns the request's parameters.
func (s *State) Params() Params { return s.p }

// Output returns the generated ids as Hugging Face's generate returns them: the window's
// positions [len(prompt), len(prompt)+GenLen) (at most GenLen tokens, although the window is
// decoded in whole blocks), cut at the first EOS, with masked positions removed. Before Done it
// is a snapshot that later steps may still change. After Stop it ends at the last finished
// block.
func (s *State) Output() []int32 {
	out := s.x[s.n:min(s.end, s.n+s.p.GenLen)]
	if i := slices.Index(out, s.eosID); i >= 0 {
		out = out[:i]
	}
	res := make([]int32, 0, len(out))
	for _, t := range out {
		if t != s.maskID {
			res = append(res, t)
		}
	}
	return res
}

// Stop ends the request with FinishStop at the current block boundary. Stop strings are matched
// by the driver, which owns the tokenizer: after a Step that finished a block (BlockDone), it
// decodes Output, looks for the request's StopStrings and calls Stop on a match, then trims the
// text at the match itself. Blocks already finished stay in Output; if Stop is called in the
// middle of a block, that unfinished block is dropped from Output. Stop on a finished request
// does nothing.
func (s *State) Stop() {
	if s.done {
		return
	}
	lo, _ := s.Block()
	s.done, s.reason, s.end = true, FinishStop, max(lo, s.n)
}

// Step applies one forward's predictions to the current block: preds[i] is the prediction for
// position lo+i (entries for prompt positions are ignored). As the reference:
//   - M2T: every masked position with prob > TauMask takes its predicted token; if there are
//     masked positions but none qualifies, the single most confident one does (ties: lowest
//     position);
//   - T2T (unless EditOff): every position that was not masked before the step, lies after the
//     prompt and whose predicted token differs from its token with prob > TauEdit is rewritten;
//   - the block finishes when a step with no masked positions edits nothing, or when it has no
//     masks left and MaxPostSteps editing steps have already run;
//   - a finished block holding EOS in its generated part ends the request, as does finishing the
//     last block; otherwise the next block starts. The reason is FinishStop when an EOS lies in
//     the first GenLen generated positions, else FinishLength.
//
// Step fails without changing the state if the request is done, len(preds) != hi-lo, a
// non-prompt position has a NaN probability, or a position would be written with the mask
// token or a negative id (the driver must exclude the mask token from its candidates).
func (s *State) Step(preds []Pred) (StepResult, error) {
	if s.done {
		return StepResult{}, ErrDone
	}
	lo, hi := s.Block()
	if len(preds) != hi-lo {
		return StepResult{}, fmt.Errorf("%w: got %d for block %d of %d positions", ErrInvalidPreds, len(preds), s.b, hi-lo)
	}
	res := StepResult{Block: s.b, MinMargin: math.Inf(1)}
	anyActive := false
	best, bestPos := math.Inf(-1), -1
	for i, pr := range preds {
		pos := lo + i
		if pos < s.n {
			continue // prompt: never masked, never edited
		}
		c := float64(pr.Prob)
		if math.IsNaN(c) {
			return StepResult{}, fmt.Errorf("%w: NaN probability at position %d", ErrInvalidPreds, pos)
		}
		old := s.x[pos]
		if old == s.maskID {
			anyActive = true
			res.MinMargin = min(res.MinMargin, math.Abs(c-s.p.TauMask))
			if c > s.p.TauMask {
				res.Unmasked = append(res.Unmasked, pos)
			}
			if bestPos < 0 || c > best {
				best, bestPos = c, pos
			}
		} else if !s.p.EditOff && c > s.p.TauEdit && pr.ID != old {
			res.Edited = append(res.Edited, pos)
		}
	}
	if anyActive && len(res.Unmasked) == 0 {
		res.Unmasked = []int{bestPos}
	}
	res.HasMargin = anyActive
	if !anyActive {
		res.MinMargin = 0
	}
	for _, set := range [][]int{res.Unmasked, res.Edited} {
		for _, pos := range set {
			if id := preds[pos-lo].ID; id == s.maskID || id < 0 {
				return StepResult{}, fmt.Errorf("%w: position %d would be written with token %d", ErrInvalidPreds, pos, id)
			}
		}
	}
	for _, set := range [][]int{res.Unmasked, res.Edited} {
		for _, pos := range set {
			s.x[pos] = preds[pos-lo].ID
		}
	}
	s.forwards++
	res.Tokens = slices.Clone(s.x[lo:hi])

	// The reference loop ends after this forward when it was a post step that changed nothing;
	// otherwise its next iteration begins (enterBlock's check) and may end the block there.
	if !anyActive && len(res.Edited) == 0 {
		res.BlockDone = true
	} else if !slices.Contains(s.x[lo:hi], s.maskID) {
		s.post++
		res.BlockDone = s.post > s.p.MaxPostSteps
	}
	if res.BlockDone {
		res.Committed = slices.Clone(res.Tokens)
		s.finishBlock()
	}
	res.Done = s.done
	return res, nil
}

// finishBlock ends the current block: EOS in its generated part ends the request, else the next
// block starts, or the request ends after the last one.
func (s *State) finishBlock() {
	lo, hi := s.Block()
	if slices.Contains(s.x[max(lo, s.n):hi], s.eosID) || s.b+1 >= s.nblocks {
		s.done, s.reason = true, FinishLength
		if slices.Contains(s.x[s.n:s.n+s.p.GenLen], s.eosID) {
			s.reason = FinishStop
		}
		return
	}
	s.b++
	s.post = 0
	s.enterBlock()
}

// enterBlock runs the top of the reference's per-block loop for a fresh block: a block without
// masks counts a post step and ends without a forward when that exceeds MaxPostSteps. (Every
// block after the prompt starts with masks, so this never fires in practice; it keeps the state
// machine literal.)
func (s *State) enterBlock() {
	lo, hi := s.Block()
	if slices.Contains(s.x[lo:hi], s.maskID) {
		return
	}
	s.post++
	if s.post > s.p.MaxPostSteps {
		s.finishBlock()
	}
}
