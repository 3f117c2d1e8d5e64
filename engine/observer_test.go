package engine_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/model"
)

// recorder is an engine.Observer that keeps what it was told.
type recorder struct {
	mu       sync.Mutex
	steps    map[string]int
	finished map[string]error
	results  map[string]*engine.Result
	sessions map[string]string
}

func (r *recorder) Stepped(_ context.Context, req *engine.Request, ev *engine.StepEvent, since time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.steps[req.ID]++
}

func (r *recorder) Finished(_ context.Context, req *engine.Request, session string, res *engine.Result, err error, elapsed time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finished[req.ID], r.results[req.ID], r.sessions[req.ID] = err, res, session
}

func TestObserver(t *testing.T) {
	f := loadFixture(t)
	rec := &recorder{steps: map[string]int{}, finished: map[string]error{}, results: map[string]*engine.Result{}, sessions: map[string]string{}}
	st := engine.NewLocalStepper(f.m)
	e := engine.New(engine.Config{MaskID: f.gen.MaskID, EOSID: f.gen.EOSID, Vocab: f.m.Cfg.Vocab, MaxContext: f.m.Cfg.MaxPositions,
		Observer: rec}, st, f.tok)
	t.Cleanup(e.Stop)
	c := f.gen.Cases[0]
	r, err := e.Generate(context.Background(), request(t, c, "ok"), nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := request(t, c, "bad")
	bad.Prompt = nil
	if _, err := e.Generate(context.Background(), bad, nil); err == nil {
		t.Fatal("empty prompt accepted")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.steps["ok"] != c.Forwards || r.Steps != c.Forwards {
		t.Errorf("observer saw %d steps, result says %d, want %d", rec.steps["ok"], r.Steps, c.Forwards)
	}
	if err, ok := rec.finished["ok"]; !ok || err != nil || rec.results["ok"] != r && rec.results["ok"].Text != r.Text || rec.sessions["ok"] == "" {
		t.Errorf("finished ok: err %v (seen %v), session %q", err, ok, rec.sessions["ok"])
	}
	if err := rec.finished["bad"]; !errors.Is(err, errdefs.ErrInvalidArgument) || rec.sessions["bad"] != "" {
		t.Errorf("finished bad: %v, session %q; want an invalid-argument refusal without a session", err, rec.sessions["bad"])
	}
	if e.Running() != 0 || e.Waiting() != 0 {
		t.Errorf("idle engine: %d running, %d waiting", e.Running(), e.Waiting())
	}
}

// blockingStepper blocks every Open until release is closed, then fails it.
type blockingStepper struct{ release chan struct{} }

func (b blockingStepper) Open(context.Context, string, int, int) error {
	<-b.release
	return errors.New("test: no sessions")
}
func (blockingStepper) Step(context.Context, []engine.SeqStep) ([]model.StepOut, engine.StepInfo, error) {
	return nil, engine.StepInfo{}, errors.New("test: no steps")
}
func (blockingStepper) Close(context.Context, string) error { return nil }

// TestRunningWaiting: with max_active 1 and two requests, one runs and one waits; both fail when
// the stepper does, and the engine is idle again.
func TestRunningWaiting(t *testing.T) {
	st := blockingStepper{release: make(chan struct{})}
	e := engine.New(engine.Config{MaxActive: 1, MaskID: 9, EOSID: 8}, st, nil)
	t.Cleanup(e.Stop)
	p, err := diffusion.Preset("q")
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for _, id := range []string{"a", "b"} {
		go func() {
			_, err := e.Generate(context.Background(), engine.Request{ID: id, Prompt: []int32{1, 2}, Params: p}, nil)
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.Running() != 1 || e.Waiting() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("running %d, waiting %d; want 1 and 1", e.Running(), e.Waiting())
		}
		time.Sleep(time.Millisecond)
	}
	close(st.release)
	for range 2 {
		if err := <-errs; err == nil {
			t.Error("a request succeeded on a stepper that opens no session")
		}
	}
	if e.Running() != 0 || e.Waiting() != 0 {
		t.Errorf("after both failed: running %d, waiting %d", e.Running(), e.Waiting())
	}
}
