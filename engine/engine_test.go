package engine_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/kernels/cuda"
	"github.com/dlmesh/dlmesh/model"
	"github.com/dlmesh/dlmesh/tokenizer"
)

const tinyDir = "../models/llada2-tiny-go"

// The generation fixtures (internal/fixtures).
type (
	traceStep = fixtures.TraceStep
	genCase   = fixtures.GenCase
	genFile   = fixtures.GenFile
)

type fixture struct {
	m   *model.Model
	tok *tokenizer.Tokenizer
	gen genFile
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

func loadFixture(tb testing.TB) fixture {
	tb.Helper()
	fixOnce.Do(func() {
		opts := model.LoadOptions{Attention: true, Experts: model.AllExperts(16)}
		var be kernels.Backend = cpu.New()
		if os.Getenv("DLMESH_TEST_BACKEND") == "cuda" { // the GPU check; see model's testBackend
			if be, fixErr = cuda.New(0); fixErr != nil {
				return
			}
			opts.F32Weights = true
		}
		fix.m, fixErr = model.Load(context.Background(), tinyDir, be, opts)
		if fixErr != nil {
			return
		}
		fix.tok, fixErr = tokenizer.Load(tinyDir)
	})
	if fixErr != nil {
		tb.Fatal(fixErr)
	}
	fix.gen = fixtures.LoadGen(tb)
	return fix
}

func newEngine(tb testing.TB, f fixture, st engine.Stepper) *engine.Engine {
	tb.Helper()
	e := engine.New(engine.Config{MaskID: f.gen.MaskID, EOSID: f.gen.EOSID, Vocab: f.m.Cfg.Vocab, MaxContext: f.m.Cfg.MaxPositions}, st, f.tok)
	tb.Cleanup(e.Stop)
	return e
}

func request(tb testing.TB, c genCase, id string) engine.Request {
	tb.Helper()
	p, err := diffusion.Preset(c.Mode)
	if err != nil {
		tb.Fatal(err)
	}
	p.GenLen = c.GenLength
	p.BlockLen = c.BlockLength
	return engine.Request{ID: id, Prompt: c.PromptIDs, Params: p, Trace: true}
}

// checkCase compares a result with the reference, step by step. A divergence is excused only at
// a step whose smallest masked-confidence distance to the threshold is under 1e-4 (a tie).
func checkCase(t *testing.T, tok *tokenizer.Tokenizer, c genCase, r *engine.Result) {
	t.Helper()
	for i, s := range c.Trace {
		if i >= len(r.Trace) {
			t.Fatalf("stopped after %d steps, reference has %d", len(r.Trace), len(c.Trace))
		}
		g := r.Trace[i]
		same := g.Block == s.Block && slices.Equal(g.Unmasked, nonNil(s.Unmasked)) && slices.Equal(g.Edited, nonNil(s.Edited)) && slices.Equal(g.Tokens, s.Tokens)
		if !same {
			if s.MinMargin != nil && *s.MinMargin < 1e-4 {
				t.Skipf("step %d diverges at a tie (min margin %.2g < 1e-4)", i, *s.MinMargin)
			}
			t.Fatalf("step %d (block %d):\n got unmasked %v edited %v tokens %v\nwant unmasked %v edited %v tokens %v",
				i, s.Block, g.Unmasked, g.Edited, g.Tokens, s.Unmasked, s.Edited, s.Tokens)
		}
	}
	if len(r.Trace) != len(c.Trace) {
		t.Errorf("%d steps, reference %d", len(r.Trace), len(c.Trace))
	}
	if r.Forwards != c.Forwards {
		t.Errorf("%d forwards, reference %d", r.Forwards, c.Forwards)
	}
	// The fixture's ids are the reference's whole window: a request returns the first
	// gen_length, their text decoded without special tokens.
	ids, text := cutCase(tok, c)
	if !slices.Equal(r.IDs, ids) {
		t.Errorf("ids\n got %v\nwant %v", r.IDs, ids)
	}
	if r.Text != text {
		t.Errorf("text\n got %q\nwant %q", r.Text, text)
	}
	if want := map[bool]string{true: "length", false: "stop"}[len(ids) == c.GenLength]; r.FinishReason != want {
		t.Errorf("finish reason %q, want %q", r.FinishReason, want)
	}
}

// cutCase returns what a request for fixture case c returns: the first gen_length of the
// fixture's ids and their text without special tokens, which is a prefix of the fixture's text
// (the reference decodes every id of the window).
func cutCase(tok *tokenizer.Tokenizer, c genCase) ([]int32, string) {
	ids := c.IDs[:min(len(c.IDs), c.GenLength)]
	var plain []int32
	for _, id := range ids {
		if !tok.IsSpecial(id) {
			plain = append(plain, id)
		}
	}
	return ids, tok.Decode(plain)
}

func nonNil(v []int) []int {
	if v == nil {
		return []int{}
	}
	return v
}

func TestGenerateMatchesReference(t *testing.T) {
	f := loadFixture(t)
	e := newEngine(t, f, engine.NewLocalStepper(f.m))
	for i, c := range f.gen.Cases {
		t.Run(fmt.Sprintf("%d-%s", i/3, c.Mode), func(t *testing.T) {
			r, err := e.Generate(context.Background(), request(t, c, "t"), nil)
			if err != nil {
				t.Fatal(err)
			}
			checkCase(t, f.tok, c, r)
		})
	}
}

// TestGenerateBatchedMatchesReference runs all nine cases at once through one engine, so every
// forward carries several requests at different prompt lengths, blocks and modes.
func TestGenerateBatchedMatchesReference(t *testing.T) {
	f := loadFixture(t)
	st := engine.NewLocalStepper(f.m)
	e := newEngine(t, f, st)
	results := make([]*engine.Result, len(f.gen.Cases))
	errs := make([]error, len(f.gen.Cases))
	var wg sync.WaitGroup
	for i, c := range f.gen.Cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = e.Generate(context.Background(), request(t, c, fmt.Sprint("b", i)), nil)
		}()
	}
	wg.Wait()
	for i, c := range f.gen.Cases {
		t.Run(fmt.Sprintf("%d-%s", i/3, c.Mode), func(t *testing.T) {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			checkCase(t, f.tok, c, results[i])
		})
	}
	if n := st.Sessions(); n != 0 {
		t.Errorf("%d sessions left open", n)
	}
}

func TestGenerateEvents(t *testing.T) {
	f := loadFixture(t)
	e := newEngine(t, f, engine.NewLocalStepper(f.m))
	c := f.gen.Cases[0]
	var steps, blocks, blockSteps int
	var text string
	r, err := e.Generate(context.Background(), request(t, c, "ev"), func(ev engine.Event) {
		switch {
		case ev.Step != nil:
			steps++
			blockSteps++
			if len(ev.Step.Changes) == 0 && ev.Step.MaskedBefore > 0 {
				t.Errorf("step %d with %d masks changed nothing", ev.Step.Step, ev.Step.MaskedBefore)
			}
			// counted per generated block: block 0 holds the first generated position
			if ev.Step.Block != blocks || ev.Step.Step != blockSteps {
				t.Errorf("step event %d: block %d step %d, want block %d step %d", steps, ev.Step.Block, ev.Step.Step, blocks, blockSteps)
			}
		case ev.Block != nil:
			if ev.Block.Block != blocks {
				t.Errorf("block event %d: block %d", blocks, ev.Block.Block)
			}
			blocks++
			blockSteps = 0
			text += ev.Block.Text
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if steps != c.Forwards || blocks != r.Blocks {
		t.Errorf("events: %d steps (want %d), %d blocks (want %d)", steps, c.Forwards, blocks, r.Blocks)
	}
	if text != r.Text {
		t.Errorf("block texts %q != final text %q", text, r.Text)
	}
}

func TestGenerateCancel(t *testing.T) {
	f := loadFixture(t)
	st := engine.NewLocalStepper(f.m)
	e := newEngine(t, f, st)
	c := f.gen.Cases[2]
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	_, err := e.Generate(ctx, request(t, c, "cancel"), func(ev engine.Event) {
		if ev.Step != nil {
			n++
			if n == 3 {
				cancel()
			}
		}
	})
	if err == nil {
		t.Fatal("cancelled request finished without error")
	}
	if st.Sessions() != 0 {
		t.Errorf("cancelled request left its session open")
	}
	// the engine still serves
	r, err := e.Generate(context.Background(), request(t, f.gen.Cases[0], "after"), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkCase(t, f.tok, f.gen.Cases[0], r)
}

func TestGenerateRejectsBadRequests(t *testing.T) {
	f := loadFixture(t)
	e := newEngine(t, f, engine.NewLocalStepper(f.m))
	p, _ := diffusion.Preset("q")
	for _, tc := range []struct {
		name string
		req  engine.Request
	}{
		{"empty prompt", engine.Request{Params: p}},
		{"token out of range", engine.Request{Prompt: []int32{99999}, Params: p}},
		{"window too long", engine.Request{Prompt: []int32{1}, Params: func() diffusion.Params { q := p; q.GenLen = 5000; return q }()}},
		{"bad tau", engine.Request{Prompt: []int32{1}, Params: func() diffusion.Params { q := p; q.TauMask = 2; return q }()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.Generate(context.Background(), tc.req, nil); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

// A stop string cuts the text before it, in the final result and in the block texts a live
// view shows, and ends the request at the block where it appears.
func TestGenerateStopString(t *testing.T) {
	f := loadFixture(t)
	e := newEngine(t, f, engine.NewLocalStepper(f.m))
	c := f.gen.Cases[0]
	_, full := cutCase(f.tok, c)
	const stop = `"strings"`
	cut := strings.Index(full, stop)
	if cut < 0 {
		t.Fatalf("fixture text %q has no %s", full, stop)
	}
	req := request(t, c, "stop")
	req.Params.StopStrings = []string{stop}
	var blocks []string
	r, err := e.Generate(context.Background(), req, func(ev engine.Event) {
		if ev.Block != nil {
			blocks = append(blocks, ev.Block.Text)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Text != full[:cut] || r.FinishReason != "stop" {
		t.Errorf("text %q finish %q, want %q stop", r.Text, r.FinishReason, full[:cut])
	}
	if joined := strings.Join(blocks, ""); joined != r.Text {
		t.Errorf("block texts %q joined %q, final %q", blocks, joined, r.Text)
	}
	if got := f.tok.Decode(r.IDs); !strings.HasPrefix(got, r.Text) || len(r.IDs) > len(c.IDs) {
		t.Errorf("ids %v decode to %q, not covering %q", r.IDs, got, r.Text)
	}
	if r.Forwards > c.Forwards {
		t.Errorf("%d forwards, more than the whole window's %d", r.Forwards, c.Forwards)
	}
}
