package diffusion

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func lse(logits []float32, invT float64) float32 {
	s := 0.0
	for _, l := range logits {
		s += math.Exp(float64(l) * invT)
	}
	return float32(math.Log(s))
}

func samplerFor(tb testing.TB, temp float64, topK int, topP float64, seed uint64) *Sampler {
	tb.Helper()
	p, _ := Preset("q")
	p.Temperature, p.TopK, p.TopP, p.Seed = temp, topK, topP, seed
	if err := p.Validate(); err != nil {
		tb.Fatal(err)
	}
	return NewSampler(p)
}

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func TestPickGreedy(t *testing.T) {
	s := samplerFor(t, 0, 0, 1, 1)
	c := Candidates{IDs: []int32{5, 7, 9}, Logits: []float32{1, 3, 3}}
	c.LSE = lse(c.Logits, 1) + 0.25 // the rest of the vocabulary
	got := s.Pick(c)
	if want := math.Exp(3 - float64(c.LSE)); got.ID != 7 || !near(float64(got.Prob), want, 1e-6) {
		t.Fatalf("got %+v, want id 7 prob %v", got, want)
	}
}

// probs returns logits with LSE 0 for temperature 1: the candidates' probabilities are exactly p.
func probs(p ...float64) Candidates {
	c := Candidates{LSE: 0}
	for i, v := range p {
		c.IDs = append(c.IDs, int32(i))
		c.Logits = append(c.Logits, float32(math.Log(v)))
	}
	return c
}

func TestPickSampling(t *testing.T) {
	c := probs(0.15, 0.5, 0.3) // 0.05 of the mass lies outside the K candidates
	raw := map[int32]float64{1: .5, 2: .3, 0: .15}
	for _, tc := range []struct {
		name string
		topK int
		topP float64
		want map[int32]float64 // how often each kept candidate is drawn: its share of the kept ones
		prob map[int32]float64 // its Prob, when not want (the kept set is the whole vocabulary)
	}{
		{"all", 0, 1, map[int32]float64{1: .5 / .95, 2: .3 / .95, 0: .15 / .95}, raw},
		{"top-k 1", 1, 1, map[int32]float64{1: 1}, nil},
		{"top-k 2", 2, 1, map[int32]float64{1: .5 / .8, 2: .3 / .8}, nil},
		{"top-p 0.75", 0, 0.75, map[int32]float64{1: .5 / .8, 2: .3 / .8}, nil},
		{"top-p 0.4", 0, 0.4, map[int32]float64{1: 1}, nil},
		{"top-p beyond the candidates' mass", 0, 0.99, map[int32]float64{1: .5 / .95, 2: .3 / .95, 0: .15 / .95}, raw},
		{"top-k then top-p", 2, 0.99, map[int32]float64{1: .5 / .8, 2: .3 / .8}, nil},
		// top-p measures the renormalised top-k set (0.625, 0.375), not the vocabulary (0.5, 0.3):
		// 0.625 > 0.6 cuts the second candidate.
		{"top-p over the renormalised top-k", 2, 0.6, map[int32]float64{1: 1}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := samplerFor(t, 1, tc.topK, tc.topP, 7)
			prob := tc.prob
			if prob == nil {
				prob = tc.want
			}
			const draws = 20000
			count := map[int32]int{}
			for range draws {
				got := s.Pick(c)
				if _, ok := tc.want[got.ID]; !ok {
					t.Fatalf("picked %d, not kept", got.ID)
				}
				if want := prob[got.ID]; !near(float64(got.Prob), want, 1e-5) {
					t.Fatalf("picked %d with prob %v, want %v", got.ID, got.Prob, want)
				}
				count[got.ID]++
			}
			for id, want := range tc.want {
				if f := float64(count[id]) / draws; !near(f, want, 0.02) {
					t.Errorf("id %d drawn %.3f of the time, want %.3f", id, f, want)
				}
			}
		})
	}
}

// Greedy decoding takes the argmax, and its confidence is renormalised over what top-k and top-p
// keep, as HF's sample_tokens does with temperature 0.
func TestPickGreedyFiltered(t *testing.T) {
	c := probs(0.15, 0.5, 0.3)
	for _, tc := range []struct {
		name string
		topK int
		topP float64
		prob float64
	}{
		{"none", 0, 1, .5},
		{"top-k 2", 2, 1, .5 / .8},
		{"top-k 1", 1, 1, 1},
		{"top-p 0.75", 0, 0.75, .5 / .8},
		{"top-p 0.4", 0, 0.4, 1},
		{"top-p beyond the candidates", 0, 0.99, .5},
		{"top-k 2 then top-p 0.6", 2, 0.6, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := samplerFor(t, 0, tc.topK, tc.topP, 1).Pick(c)
			if got.ID != 1 || !near(float64(got.Prob), tc.prob, 1e-6) {
				t.Fatalf("got %+v, want id 1 prob %v", got, tc.prob)
			}
		})
	}
}

// The number of candidates the LM head returns is an implementation detail: a greedy pick is the
// same with 1, 2, … or every candidate, as long as there are as many as Params.Candidates asks.
func TestPickGreedyCandidateCount(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const vocab = 300
	for trial := range 200 {
		logits := make([]float32, vocab)
		for i := range logits {
			logits[i] = float32(rng.NormFloat64() * 3)
		}
		all := Candidates{LSE: lse(logits, 1)}
		order := make([]int, vocab)
		for i := range order {
			order[i] = i
		}
		slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(logits[b], logits[a]) })
		for _, j := range order {
			all.IDs = append(all.IDs, int32(j))
			all.Logits = append(all.Logits, logits[j])
		}
		for _, f := range []struct {
			topK int
			topP float64
		}{{0, 1}, {5, 1}, {40, 0.9}, {0, 0.5}, {0, 0.95}} {
			p, _ := Preset("q")
			p.TopK, p.TopP = f.topK, f.topP
			want := NewSampler(p).Pick(all)
			for _, k := range []int{p.Candidates(64), p.Candidates(64) + 1, 100, vocab} {
				c := Candidates{IDs: all.IDs[:k], Logits: all.Logits[:k], LSE: all.LSE}
				if f.topK == 0 && f.topP < 1 && !nucleusWithin(all, f.topP, k) {
					continue // fewer candidates than the nucleus: documented as truncated
				}
				if got := NewSampler(p).Pick(c); got != want {
					t.Fatalf("trial %d top_k %d top_p %v: %d candidates give %+v, all %d give %+v", trial, f.topK, f.topP, k, got, vocab, want)
				}
			}
		}
	}
}

// nucleusWithin reports whether the top-p nucleus of sorted candidates c closes within k of them.
func nucleusWithin(c Candidates, topP float64, k int) bool {
	cum := 0.0
	for i := range k {
		cum += math.Exp(float64(c.Logits[i]) - float64(c.LSE))
		if cum > topP {
			return true
		}
	}
	return false
}

func TestPickTemperature(t *testing.T) {
	c := Candidates{IDs: []int32{3, 4}, Logits: []float32{2, 0}}
	c.LSE = lse(c.Logits, 0.5) // T = 2: probabilities ∝ e^1, e^0
	s := samplerFor(t, 2, 0, 1, 3)
	want := map[int32]float64{3: math.E / (math.E + 1), 4: 1 / (math.E + 1)}
	for range 100 {
		got := s.Pick(c)
		if !near(float64(got.Prob), want[got.ID], 1e-6) {
			t.Fatalf("got %+v, want prob %v", got, want[got.ID])
		}
	}
}

func TestPickDeterministic(t *testing.T) {
	c := probs(0.2, 0.2, 0.2, 0.2, 0.2)
	run := func(seed uint64) []int32 {
		s := samplerFor(t, 1, 0, 1, seed)
		var ids []int32
		for range 200 {
			ids = append(ids, s.Pick(c).ID)
		}
		return ids
	}
	a, b, other := run(11), run(11), run(12)
	if !slices.Equal(a, b) {
		t.Fatal("same seed, different picks")
	}
	if slices.Equal(a, other) {
		t.Fatal("different seeds, identical 200 picks")
	}
}

func TestPickPanicsWithoutCandidates(t *testing.T) {
	for _, c := range []Candidates{{}, {IDs: []int32{1}, Logits: []float32{1, 2}}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("no panic for %+v", c)
				}
			}()
			samplerFor(t, 1, 0, 1, 1).Pick(c)
		}()
	}
}
