package engine_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/model"
)

// losingStepper is a LocalStepper that loses the session of request victim at its failAt-th
// step (its KV is freed, the step fails with ErrSessionLost), as the gateway's stepper reports an
// attnd that died; it records the tokens each session fed per step.
type losingStepper struct {
	*engine.LocalStepper
	victim string
	failAt int

	mu    sync.Mutex
	steps int
	lost  int
	fed   []int // tokens per sequence per step, in order
}

func (l *losingStepper) Step(ctx context.Context, steps []engine.SeqStep) ([]model.StepOut, engine.StepInfo, error) {
	outs, info, err := l.LocalStepper.Step(ctx, steps)
	if err != nil {
		return outs, info, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var failed *engine.StepError
	for i, s := range steps {
		l.fed = append(l.fed, len(s.Tokens))
		if !strings.HasPrefix(s.Session, l.victim+"#") {
			continue
		}
		if l.steps++; l.steps != l.failAt {
			continue
		}
		l.lost++
		_ = l.LocalStepper.Close(ctx, s.Session)
		failed = &engine.StepError{Sessions: map[string]error{s.Session: fmt.Errorf("attnd-1 gone: %w", engine.ErrSessionLost)}}
		outs[i] = model.StepOut{}
	}
	if failed != nil {
		return outs, info, failed
	}
	return outs, info, nil
}

// TestSessionLostMigrates: a request whose session is lost mid-run is reopened and re-prefilled,
// and finishes exactly as the reference step for step; the other requests of the batch are
// unharmed; the migration is counted; no session is left open.
func TestSessionLostMigrates(t *testing.T) {
	f := loadFixture(t)
	for _, failAt := range []int{1, 5, 40} { // the first step, inside the first block, a later block
		t.Run(fmt.Sprint("step", failAt), func(t *testing.T) {
			st := &losingStepper{LocalStepper: engine.NewLocalStepper(f.m), victim: "victim", failAt: failAt}
			e := newEngine(t, f, st)
			var wg sync.WaitGroup
			var other, victim *engine.Result
			var otherErr, victimErr error
			wg.Add(2)
			go func() {
				defer wg.Done()
				other, otherErr = e.Generate(context.Background(), request(t, f.gen.Cases[1], "other"), nil)
			}()
			go func() {
				defer wg.Done()
				victim, victimErr = e.Generate(context.Background(), request(t, f.gen.Cases[6], "victim"), nil)
			}()
			wg.Wait()
			if otherErr != nil || victimErr != nil {
				t.Fatalf("other: %v, victim: %v", otherErr, victimErr)
			}
			if st.lost != 1 {
				t.Fatalf("the session was lost %d times, want once (the victim made %d steps)", st.lost, st.steps)
			}
			checkCase(t, f.tok, f.gen.Cases[1], other)
			checkCase(t, f.tok, f.gen.Cases[6], victim)
			if victim.Migrations != 1 || e.Migrations() != 1 || victim.Reprefill <= 0 {
				t.Errorf("victim migrations %d (engine %d), re-prefill %v: want 1 and a time", victim.Migrations, e.Migrations(), victim.Reprefill)
			}
			if n := st.Sessions(); n != 0 {
				t.Errorf("%d sessions left open", n)
			}
		})
	}
}

// TestChunkedPrefill: a prompt longer than PrefillChunk is fed in chunks of whole blocks, one per
// step (so other requests interleave), with exactly the result of feeding it at once.
func TestChunkedPrefill(t *testing.T) {
	f := loadFixture(t)
	c := f.gen.Cases[0]
	long := c.PromptIDs
	for len(long) < 150 {
		long = append(long, c.PromptIDs...)
	}
	run := func(chunk int) (*engine.Result, []int) {
		st := &losingStepper{LocalStepper: engine.NewLocalStepper(f.m)}
		e := engine.New(engine.Config{MaskID: f.gen.MaskID, EOSID: f.gen.EOSID, Vocab: f.m.Cfg.Vocab, MaxContext: f.m.Cfg.MaxPositions,
			PrefillChunk: chunk}, st, f.tok)
		defer e.Stop()
		req := request(t, c, "long")
		req.Prompt = long
		req.Params.GenLen = 32
		r, err := e.Generate(context.Background(), req, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r, st.fed
	}
	whole, fedWhole := run(-1)
	chunked, fedChunked := run(32)
	if !slices.Equal(whole.IDs, chunked.IDs) || whole.Forwards != chunked.Forwards {
		t.Errorf("chunked prefill: ids %v (%d forwards), whole: %v (%d forwards)", chunked.IDs, chunked.Forwards, whole.IDs, whole.Forwards)
	}
	if fedWhole[0] <= 32 || slices.Max(fedChunked) > 64 || len(fedChunked) <= len(fedWhole) {
		t.Errorf("tokens fed per step: whole %v, chunked %v: want the prompt split in 32-token chunks", fedWhole, fedChunked)
	}
}
