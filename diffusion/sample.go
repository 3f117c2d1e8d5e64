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

// Pick chooses the token of one position.
//
// Temperature 0 (greedy): the candidate with the largest logit (the first on ties, so IDs[0] for
// sorted candidates) with Prob = exp(logit - LSE), its softmax probability over the vocabulary.
//
// Temperature T > 0, as LLaDA's sampler: logits are scaled by 1/T; candidates are ordered by
// logit (descending, stable); top-k keeps the first TopK (if set); top-p keeps the smallest
// prefix whose probabilities exp(l/T - LSE) sum to at least TopP (all kept ones when the K
// candidates together fall short); the kept probabilities are renormalised, one token is drawn,
// and Prob is its renormalised probability. Since only K candidates exist, a TopK above K and a
// TopP beyond their total mass have no further effect.
//
// Pick panics when c has no candidates or IDs and Logits differ in length.
func (s *Sampler) Pick(c Candidates) Pred {
	if len(c.IDs) == 0 || len(c.IDs) != len(c.Logits) {
		panic("diffusion: Sampler.Pick: candidates need as many logits as ids, at least one")
	}
	lse := float64(c.LSE)
	if s.p.Temperature == 0 {
		j := 0
		for i, l := range c.Logits {
			if l > c.Logits[j] {
				j = i
			}
		}
		return Pred{ID: c.IDs[j], Prob: float32(math.Exp(float64(c.Logits[j]) - lse))}
	}
	invT := 1 / s.p.Temperature
	s.order = s.order[:0]
	for i := range c.IDs {
		s.order = append(s.order, i)
	}
	slices.SortStableFunc(s.order, func(a, b int) int { return cmp.Compare(c.Logits[b], c.Logits[a]) })
	keep := len(s.order)
	if s.p.TopK > 0 && s.p.TopK < keep {
		keep = s.p.TopK
	}
	if s.p.TopP < 1 {
		cum := 0.0
		for i, j := range s.order[:keep] {
			cum += math.Exp(float64(c.Logits[j])*invT - lse)
			if cum >= s.p.TopP {
				keep = i + 1
				break
			}
		}
	}
	// Renormalise relative to the best kept logit, which cannot underflow to an all-zero sum.
	top := float64(c.Logits[s.order[0]]) * invT
	sum := 0.0
	for _, j := range s.order[:keep] {
		sum += math.Exp(float64(c.Logits[j])*invT - top)
	}
	u := s.rng.Float64() * sum
	pick := s.order[keep-1]
	cum := 0.0
	for _, j := range s.order[:keep] {
		cum += math.Exp(float64(c.Logits[j])*invT - top)
		if u < cum {
			pick = j
			break
		}
	}
	return Pred{ID: c.IDs[pick], Prob: float32(math.Exp(float64(c.Logits[pick])*invT-top) / sum)}
}
