package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/model"
)

// flakyStepper is a LocalStepper whose steps fail for the sessions of request victim from its
// failAt-th step on, the way the gateway's stepper reports an attnd that died under some of the
// batch's sessions.
type flakyStepper struct {
	*engine.LocalStepper
	victim string
	failAt int

	mu    sync.Mutex
	steps int
}

var errAttndGone = errors.New("attnd-2: connection refused")

func (f *flakyStepper) Step(ctx context.Context, steps []engine.SeqStep) ([]model.StepOut, engine.StepInfo, error) {
	outs, info, err := f.LocalStepper.Step(ctx, steps)
	if err != nil {
		return outs, info, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var failed *engine.StepError
	for i, s := range steps {
		if !strings.HasPrefix(s.Session, f.victim+"#") {
			continue
		}
		if f.steps++; f.steps < f.failAt {
			continue
		}
		if failed == nil {
			failed = &engine.StepError{Sessions: map[string]error{}}
		}
		failed.Sessions[s.Session] = errAttndGone
		outs[i] = model.StepOut{} // a failed session has no output
	}
	if failed != nil {
		return outs, info, failed
	}
	return outs, info, nil
}

// TestStepFailureSparesOtherRequests: when a batched step fails for one request's session only,
// that request fails with the stepper's error and every other request of the batch finishes
// exactly as the reference.
func TestStepFailureSparesOtherRequests(t *testing.T) {
	f := loadFixture(t)
	st := &flakyStepper{LocalStepper: engine.NewLocalStepper(f.m), victim: "victim", failAt: 4}
	e := newEngine(t, f, st)
	cases := f.gen.Cases[:3]
	results := make([]*engine.Result, len(cases))
	errs := make([]error, len(cases))
	var victimErr error
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = e.Generate(context.Background(), request(t, c, fmt.Sprint("ok", i)), nil)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, victimErr = e.Generate(context.Background(), request(t, f.gen.Cases[8], "victim"), nil)
	}()
	wg.Wait()
	if !errors.Is(victimErr, errAttndGone) {
		t.Errorf("victim: error %v, want one wrapping %v", victimErr, errAttndGone)
	}
	for i, c := range cases {
		t.Run(fmt.Sprint("case", i), func(t *testing.T) {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			checkCase(t, f.tok, c, results[i])
		})
	}
	if st.steps < st.failAt {
		t.Fatalf("the victim made %d steps: the failure was never injected", st.steps)
	}
	if n := st.Sessions(); n != 0 {
		t.Errorf("%d sessions left open", n)
	}
}

// TestStepErrorFailsAll: an error that is not a *StepError fails every request of the step.
func TestStepErrorFailsAll(t *testing.T) {
	f := loadFixture(t)
	st := &failingStepper{LocalStepper: engine.NewLocalStepper(f.m)}
	e := newEngine(t, f, st)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.Generate(context.Background(), request(t, f.gen.Cases[i], fmt.Sprint("r", i)), nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, errBackend) {
			t.Errorf("request %d: %v, want %v", i, err, errBackend)
		}
	}
	if n := st.Sessions(); n != 0 {
		t.Errorf("%d sessions left open", n)
	}
}

type failingStepper struct{ *engine.LocalStepper }

var errBackend = errors.New("backend: device lost")

func (f *failingStepper) Step(context.Context, []engine.SeqStep) ([]model.StepOut, engine.StepInfo, error) {
	return nil, engine.StepInfo{}, errBackend
}

// TestLocalStepperDegraded: a router mask makes a step degraded only when it leaves an expert out.
func TestLocalStepperDegraded(t *testing.T) {
	f := loadFixture(t)
	for _, tc := range []struct {
		name    string
		allowed []bool
		want    bool
	}{
		{"no mask", nil, false},
		{"mask allowing every expert", allTrue(16), false},
		{"one expert masked", func() []bool { a := allTrue(16); a[5] = false; return a }(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := engine.NewLocalStepper(f.m)
			st.Allowed = tc.allowed
			ctx := context.Background()
			if err := st.Open(ctx, "s", 64, 32); err != nil {
				t.Fatal(err)
			}
			defer st.Close(ctx, "s")
			_, info, err := st.Step(ctx, []engine.SeqStep{{Session: "s", Tokens: f.gen.Cases[0].PromptIDs[:8], OutRows: 1, TopK: 1, InvTemp: 1}})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(info.Degraded) == 1 && info.Degraded[0]; got != tc.want || (!tc.want && info.Degraded != nil) {
				t.Errorf("degraded %v, want [%v]", info.Degraded, tc.want)
			}
		})
	}
}

func allTrue(n int) []bool {
	a := make([]bool, n)
	for i := range a {
		a[i] = true
	}
	return a
}

func TestStepErrorMessage(t *testing.T) {
	err := &engine.StepError{Sessions: map[string]error{"b#2": errAttndGone, "a#1": errAttndGone}}
	want := "engine: step failed for 2 session(s); a#1: attnd-2: connection refused; b#2: attnd-2: connection refused"
	if err.Error() != want {
		t.Errorf("got %q\nwant %q", err.Error(), want)
	}
	if !errors.Is(err, errAttndGone) {
		t.Error("errors.Is does not see the sessions' errors")
	}
}
