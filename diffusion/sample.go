package diffusion

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
)

// Candidates is what the model's LM head returns for one position: the top-K token ids with
// their raw logits (any order; normally descending), and LSE, the log-sum-exp over the whole
// vocabulary of logits·(1/Temperature) (of the raw logits when Temperature is 0). Full logits
// never leave the model, so sampling sees only these K candidates.
type Candidates struct {
	IDs    []int32
	Logits []float32
	LSE    float32
}

// Sampler turns Candidates into a Pred following the request's Temperature, TopK and TopP.
// It owns a PCG generator seeded from Params.Seed: the same seed and the same sequence of
// Candidates give the same sequence of Preds. A greedy Pick draws nothing; a sampling Pick draws
// exactly one number. Not safe for concurrent use.
type Sampler struct {
	p     Params
	rng   *rand.Rand
	order []int
}

// pcgStream is the fixed second PCG seed word; the request's Seed is the first.
const pcgStream = 0x646c6d6573680001 // "dlmesh" + 1

// NewSampler returns the sampler of one request.
func NewSampler(p Params) *Sampler {
	return &Sampler{p: p, rng: rand.New(rand.NewPCG(p.Seed, pcgStream))}
}

// Candidates returns how many LM-head candidates a position needs for an exact Pick under p:
// 1 when greedy without top_k and top_p (the argmax and the vocabulary's LSE suffice), TopK
// when top_k is set, else fallback (top_p, or plain sampling, looks at that many).
func (p Params) Candidates(fallback int) int {
	switch {
	case p.TopK > 0:
		return p.TopK
	case p.Temperature == 0 && p.TopP >= 1:
		return 1
	}
	return fallback
}

// Pick chooses the token of one position the way LLaDA2's Hugging Face sample_tokens does:
//
//  1. the logits are divided by the temperature (when it is above 0);
//  2. top-k keeps the TopK largest (when set);
//  3. top-p sorts what is left by logit, takes the softmax over it (over the kept top-k set when
//     top-k is set, else over the whole vocabulary through LSE) and keeps every candidate whose
//     preceding cumulative probability is at most TopP (the first one always);
//  4. the softmax over the kept candidates gives the probabilities: temperature 0 takes the
//     largest (the first on ties), otherwise one is drawn; Prob is the chosen token's
//     probability after that renormalisation (the confidence M2T and T2T compare).
//
// Without top-k and top-p nothing is cut and Prob is the softmax over the whole vocabulary,
// exp(logit/T - LSE), whatever K is, so the candidate count never changes a greedy result.
// Only K candidates exist: when top-p (without top-k) would keep more than them, the kept set
// is taken as the whole vocabulary (Prob exp(logit/T - LSE)) and the draw is among the K.
//
// Pick panics when c has no candidates or IDs and Logits differ in length.
func (s *Sampler) Pick(c Candidates) Pred {
	if len(c.IDs) == 0 || len(c.IDs) != len(c.Logits) {
		panic("diffusion: Sampler.Pick: candidates need as many logits as ids, at least one")
	}
	lse := float64(c.LSE)
	invT := 1.0
	if s.p.Temperature > 0 {
		invT = 1 / s.p.Temperature
	}
	z := func(j int) float64 { return float64(c.Logits[j]) * invT }
	if s.p.TopK == 0 && s.p.TopP >= 1 && s.p.Temperature == 0 {
		j := 0
		for i, l := range c.Logits {
			if l > c.Logits[j] {
				j = i
			}
		}
		return Pred{ID: c.IDs[j], Prob: float32(math.Exp(z(j) - lse))}
	}
	s.order = s.order[:0]
	for i := range c.IDs {
		s.order = append(s.order, i)
	}
	slices.SortStableFunc(s.order, func(a, b int) int { return cmp.Compare(c.Logits[b], c.Logits[a]) })
	top := z(s.order[0]) // every exp is taken relative to the best logit: the sums cannot underflow to 0
	keep, closed := len(s.order), false
	if s.p.TopK > 0 && s.p.TopK <= keep {
		keep, closed = s.p.TopK, true
	}
	if s.p.TopP < 1 {
		// The softmax the nucleus is measured in: over the top-k set, or over the vocabulary.
		norm := lse - top
		if closed {
			sum := 0.0
			for _, j := range s.order[:keep] {
				sum += math.Exp(z(j) - top)
			}
			norm = math.Log(sum)
		}
		cum := 0.0
		for i, j := range s.order[:keep] {
			if cum > s.p.TopP {
				keep, closed = i, true
				break
			}
			cum += math.Exp(z(j) - top - norm)
		}
		closed = closed || cum > s.p.TopP // the nucleus closes right after the last candidate
	}
	sum := 0.0
	for _, j := range s.order[:keep] {
		sum += math.Exp(z(j) - top)
	}
	pick := s.order[0]
	if s.p.Temperature > 0 {
		u := s.rng.Float64() * sum
		pick = s.order[keep-1]
		cum := 0.0
		for _, j := range s.order[:keep] {
			cum += math.Exp(z(j) - top)
			if u < cum {
				pick = j
				break
			}
		}
	}
	if !closed {
		return Pred{ID: c.IDs[pick], Prob: float32(math.Exp(z(pick) - lse))}
	}
	return Pred{ID: c.IDs[pick], Prob: float32(math.Exp(z(pick)-top) / sum)}
}
