package model_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/kernels/cuda"
	"github.com/dlmesh/dlmesh/model"
)

const tinyDir = "../models/llada2-tiny-go"

type forwardCase struct {
	IDs          []int32              `json:"ids"`
	BlockLength  int                  `json:"block_length"`
	Argmax       []int32              `json:"argmax"`
	Confidence   []float64            `json:"confidence"`
	Top5IDs      [][]int32            `json:"top5_ids"`
	Top5Probs    [][]float64          `json:"top5_probs"`
	LogitsSample map[string][]float64 `json:"logits_sample"`
}

func loadForwardCases(tb testing.TB) []forwardCase {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", "llada2-tiny-go", "forward_cases.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var f struct {
		Cases []forwardCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		tb.Fatal(err)
	}
	if len(f.Cases) == 0 {
		tb.Fatal("no forward cases")
	}
	return f.Cases
}

// testBackend is the CPU backend, or CUDA when DLMESH_TEST_BACKEND=cuda (the GPU check runs
// these tests on the lent GPU that way; the attention part is then widened to float32 so the
// parity tolerances stay those of the float32 reference).
func testBackend(tb testing.TB, opts *model.LoadOptions) kernels.Backend {
	tb.Helper()
	if os.Getenv("DLMESH_TEST_BACKEND") != "cuda" {
		return cpu.New()
	}
	b, err := cuda.New(0)
	if err != nil {
		tb.Fatalf("DLMESH_TEST_BACKEND=cuda: %v", err)
	}
	tb.Cleanup(func() { b.Close() })
	opts.F32Weights = true
	return b
}

func loadTiny(tb testing.TB, opts model.LoadOptions) *model.Model {
	tb.Helper()
	be := testBackend(tb, &opts)
	m, err := model.Load(context.Background(), tinyDir, be, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

func fullOpts() model.LoadOptions {
	return model.LoadOptions{Attention: true, Experts: model.AllExperts(16)}
}

// checkRows compares per-position argmax and probability against the fixture. A flip is
// tolerated only where the reference's top-2 probabilities are within 1e-5 (a tie).
func checkRows(t *testing.T, c forwardCase, from int, ids []int32, probs []float32) {
	t.Helper()
	for i := range ids {
		p := from + i
		if ids[i] != c.Argmax[p] {
			gap := c.Top5Probs[p][0] - c.Top5Probs[p][1]
			if gap < 1e-5 {
				t.Logf("position %d: argmax %d vs reference %d: a tie (top-2 gap %.2g)", p, ids[i], c.Argmax[p], gap)
				continue
			}
			t.Errorf("position %d: argmax %d, reference %d (top-2 gap %.3g)", p, ids[i], c.Argmax[p], gap)
		}
		if d := math.Abs(float64(probs[i]) - c.Confidence[p]); d > 1e-4 {
			t.Errorf("position %d: probability %.6f, reference %.6f (|Δ| %.2g > 1e-4)", p, probs[i], c.Confidence[p], d)
		}
	}
}

func TestForwardWindowMatchesReference(t *testing.T) {
	m := loadTiny(t, fullOpts())
	for ci, c := range loadForwardCases(t) {
		t.Run("case"+strconv.Itoa(ci), func(t *testing.T) {
			ids, probs, err := m.Forward(context.Background(), c.IDs, c.BlockLength)
			if err != nil {
				t.Fatal(err)
			}
			checkRows(t, c, 0, ids, probs)
		})
	}
}

func TestForwardTop5AndLogits(t *testing.T) {
	m := loadTiny(t, fullOpts())
	for ci, c := range loadForwardCases(t) {
		t.Run("case"+strconv.Itoa(ci), func(t *testing.T) {
			cache, err := m.NewCache(len(c.IDs))
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Free()
			outs, err := m.Step(context.Background(), []model.StepSeq{{Cache: cache, Tokens: c.IDs, OutRows: len(c.IDs), TopK: 5}}, c.BlockLength, model.StepOptions{})
			if err != nil {
				t.Fatal(err)
			}
			o := outs[0]
			for p := range c.IDs {
				for j := 0; j < 5; j++ {
					got, want := o.IDs[p*5+j], c.Top5IDs[p][j]
					pr := o.Prob(p, j, 1)
					if got != want {
						// neighbours within 1e-5 may swap
						if j+1 < 5 && math.Abs(c.Top5Probs[p][j]-c.Top5Probs[p][j+1]) < 1e-5 || j > 0 && math.Abs(c.Top5Probs[p][j]-c.Top5Probs[p][j-1]) < 1e-5 {
							continue
						}
						t.Errorf("position %d top-%d: id %d, reference %d", p, j+1, got, want)
					}
					if d := math.Abs(float64(pr) - c.Top5Probs[p][j]); d > 1e-4 {
						t.Errorf("position %d top-%d: probability %.6f, reference %.6f", p, j+1, pr, c.Top5Probs[p][j])
					}
				}
			}
			// raw logits of the first 16 vocabulary entries at a few positions: the top-5
			// logits are what the LM head returns, so check them against the sample when they
			// fall among the first 16 ids.
			for ps, want := range c.LogitsSample {
				p, _ := strconv.Atoi(ps)
				for j := 0; j < 5; j++ {
					id := o.IDs[p*5+j]
					if int(id) < len(want) {
						if d := math.Abs(float64(o.Logits[p*5+j]) - want[id]); d > 1e-3 {
							t.Errorf("position %d logit[%d] = %.5f, reference %.5f", p, id, o.Logits[p*5+j], want[id])
						}
					}
				}
			}
		})
	}
}

// TestForwardCachedMatchesReference runs the cached form: the first block alone, then the rest
// against the cache; and a garbage first pass overwritten by a recomputation from position 0
// (what the engine does when a finished block is fed again with its final tokens).
func TestForwardCachedMatchesReference(t *testing.T) {
	m := loadTiny(t, fullOpts())
	ctx := context.Background()
	for ci, c := range loadForwardCases(t) {
		bl := c.BlockLength
		t.Run("case"+strconv.Itoa(ci)+"/block-by-block", func(t *testing.T) {
			cache, err := m.NewCache(len(c.IDs))
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Free()
			for lo := 0; lo < len(c.IDs); lo += bl {
				hi := min(lo+bl, len(c.IDs))
				outs, err := m.Step(ctx, []model.StepSeq{{Cache: cache, Pos: lo, Tokens: c.IDs[lo:hi], OutRows: hi - lo, TopK: 1}}, bl, model.StepOptions{})
				if err != nil {
					t.Fatal(err)
				}
				probs := make([]float32, hi-lo)
				for r := range probs {
					probs[r] = outs[0].Prob(r, 0, 1)
				}
				checkRows(t, c, lo, outs[0].IDs, probs)
			}
		})
		t.Run("case"+strconv.Itoa(ci)+"/recompute", func(t *testing.T) {
			cache, err := m.NewCache(len(c.IDs))
			if err != nil {
				t.Fatal(err)
			}
			defer cache.Free()
			junk := make([]int32, min(bl, len(c.IDs)))
			for i := range junk {
				junk[i] = int32(i * 7 % 8000)
			}
			if _, err := m.Step(ctx, []model.StepSeq{{Cache: cache, Tokens: junk, OutRows: 1, TopK: 1}}, bl, model.StepOptions{}); err != nil {
				t.Fatal(err)
			}
			n := len(c.IDs)
			outs, err := m.Step(ctx, []model.StepSeq{{Cache: cache, Tokens: c.IDs, OutRows: n, TopK: 1}}, bl, model.StepOptions{})
			if err != nil {
				t.Fatal(err)
			}
			probs := make([]float32, n)
			for r := range probs {
				probs[r] = outs[0].Prob(r, 0, 1)
			}
			checkRows(t, c, 0, outs[0].IDs, probs)
		})
	}
}

// TestStepBatchMatchesAlone: several sequences at different positions in one forward give the
// same results as each alone.
func TestStepBatchMatchesAlone(t *testing.T) {
	m := loadTiny(t, fullOpts())
	ctx := context.Background()
	cases := loadForwardCases(t)
	type run struct {
		ids []int32
		pos int
	}
	var runs []run
	for _, c := range cases {
		runs = append(runs, run{c.IDs, 0})
	}
	alone := make([][]int32, len(runs))
	aloneP := make([][]float32, len(runs))
	for i, r := range runs {
		ids, p, err := m.Forward(ctx, r.ids, 32)
		if err != nil {
			t.Fatal(err)
		}
		alone[i], aloneP[i] = ids, p
	}
	var seqs []model.StepSeq
	for _, r := range runs {
		cache, err := m.NewCache(len(r.ids))
		if err != nil {
			t.Fatal(err)
		}
		defer cache.Free()
		seqs = append(seqs, model.StepSeq{Cache: cache, Tokens: r.ids, OutRows: len(r.ids), TopK: 1})
	}
	outs, err := m.Step(ctx, seqs, 32, model.StepOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range runs {
		for r := range alone[i] {
			if outs[i].IDs[r] != alone[i][r] {
				t.Errorf("seq %d row %d: batched %d, alone %d", i, r, outs[i].IDs[r], alone[i][r])
			}
			if d := math.Abs(float64(outs[i].Prob(r, 0, 1) - aloneP[i][r])); d > 1e-5 {
				t.Errorf("seq %d row %d: batched prob differs by %.2g", i, r, d)
			}
		}
	}
}

func TestStepRejectsBadInput(t *testing.T) {
	m := loadTiny(t, fullOpts())
	ctx := context.Background()
	cache, err := m.NewCache(64)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Free()
	for _, tc := range []struct {
		name string
		seq  model.StepSeq
	}{
		{"token out of vocab", model.StepSeq{Cache: cache, Tokens: []int32{9000}, OutRows: 1}},
		{"negative token", model.StepSeq{Cache: cache, Tokens: []int32{-1}, OutRows: 1}},
		{"hole before pos", model.StepSeq{Cache: cache, Pos: 40, Tokens: []int32{1}, OutRows: 1}},
		{"past capacity", model.StepSeq{Cache: cache, Tokens: make([]int32, 65), OutRows: 1}},
		{"out rows > tokens", model.StepSeq{Cache: cache, Tokens: []int32{1}, OutRows: 2}},
		{"no tokens", model.StepSeq{Cache: cache, OutRows: 0}},
		{"no cache", model.StepSeq{Tokens: []int32{1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := m.Step(ctx, []model.StepSeq{tc.seq}, 32, model.StepOptions{}); err == nil {
				t.Fatal("want an error")
			}
		})
	}
	// a partial model: experts only, no attention part
	ex := loadTiny(t, model.LoadOptions{Experts: []int{0, 1}})
	if _, err := ex.Step(ctx, []model.StepSeq{{Tokens: []int32{1}}}, 32, model.StepOptions{}); err == nil {
		t.Fatal("experts-only model stepped")
	}
	if ex.W != nil || len(ex.Experts.IDs) != 2 {
		t.Fatalf("experts-only model loaded the wrong parts: W %v, experts %v", ex.W != nil, ex.Experts.IDs)
	}
}

// TestExpertActBF16 loads the experts with bf16 activations (LoadOptions.ExpertActDType). On the
// CPU backend, which always computes in float32, the forward must equal the exact one bit for
// bit; on CUDA (DLMESH_TEST_BACKEND=cuda) the expert products are rounded to bf16, so argmaxes
// may move only where the reference's top-2 are close and probabilities stay near the reference.
func TestExpertActBF16(t *testing.T) {
	bad := fullOpts()
	bad.ExpertActDType = kernels.I32
	if _, err := model.Load(context.Background(), tinyDir, cpu.New(), bad); err == nil || !strings.Contains(err.Error(), "expert activation dtype") {
		t.Fatalf("Load with an I32 expert activation dtype: %v", err)
	}
	opts := fullOpts()
	opts.ExpertActDType = kernels.BF16
	m := loadTiny(t, opts)
	for i, set := range m.Experts.Layers {
		if set.ActDType != kernels.BF16 {
			t.Fatalf("layer %d: expert set activation dtype %v, want BF16", i, set.ActDType)
		}
	}
	exact := loadTiny(t, fullOpts())
	onCUDA := os.Getenv("DLMESH_TEST_BACKEND") == "cuda"
	for ci, c := range loadForwardCases(t) {
		ids, probs, err := m.Forward(context.Background(), c.IDs, c.BlockLength)
		if err != nil {
			t.Fatal(err)
		}
		if !onCUDA {
			wantIDs, wantProbs, err := exact.Forward(context.Background(), c.IDs, c.BlockLength)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids, wantIDs) || !slices.Equal(probs, wantProbs) {
				t.Fatalf("case %d: the CPU backend changed its result for bf16 expert activations", ci)
			}
			continue
		}
		flips, maxDiff := 0, 0.0
		for p := range ids {
			maxDiff = math.Max(maxDiff, math.Abs(float64(probs[p])-c.Confidence[p]))
			if ids[p] != c.Argmax[p] {
				flips++
				if gap := c.Top5Probs[p][0] - c.Top5Probs[p][1]; gap > 0.05 {
					t.Errorf("case %d position %d: argmax %d, reference %d with a top-2 gap of %.3g", ci, p, ids[p], c.Argmax[p], gap)
				}
			}
		}
		t.Logf("case %d: %d of %d argmaxes differ from the float32 reference, max |Δp| %.3g", ci, flips, len(ids), maxDiff)
		if maxDiff > 0.05 {
			t.Errorf("case %d: a probability is %.3g away from the reference (> 0.05)", ci, maxDiff)
		}
	}
}

// TestSetKVDType: the CPU backend has no bf16 cache, so SetKVDType refuses it at once and keeps
// the type it had.
func TestSetKVDType(t *testing.T) {
	if os.Getenv("DLMESH_TEST_BACKEND") == "cuda" {
		t.Skip("the CUDA backend has a bf16 cache: GPU parity covers it")
	}
	m := loadTiny(t, model.LoadOptions{Attention: true})
	if err := m.SetKVDType(kernels.BF16); err == nil || !errors.Is(err, kernels.ErrUnsupported) {
		t.Fatalf("SetKVDType(BF16) on the CPU backend: %v, want ErrUnsupported", err)
	}
	if m.KVDType != 0 {
		t.Errorf("a refused SetKVDType left KVDType %v", m.KVDType)
	}
	if err := m.SetKVDType(kernels.F32); err != nil || m.KVDType != kernels.F32 {
		t.Errorf("SetKVDType(F32): %v, KVDType %v", err, m.KVDType)
	}
}
