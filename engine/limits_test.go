package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/model"
)

// TestValidateRefusesWhatTheStepperWould: a top_k the LM head cannot give and a prompt holding
// the mask token are refused by Generate, naming the field, before the request joins a batch.
func TestValidateRefusesWhatTheStepperWould(t *testing.T) {
	f := loadFixture(t)
	e := newEngine(t, f, engine.NewLocalStepper(f.m))
	c := f.gen.Cases[0]
	for _, tc := range []struct {
		name  string
		edit  func(r *engine.Request)
		check func(err error) bool
		field string
	}{
		{"top_k 5000 sampling", func(r *engine.Request) { r.Params.Temperature, r.Params.TopK = 1, 5000 }, isParamError("top_k"), "top_k 5000"},
		{"top_k 5000 greedy", func(r *engine.Request) { r.Params.TopK = 5000 }, isParamError("top_k"), "top_k 5000"},
		{"top_k at the bound", func(r *engine.Request) { r.Params.Temperature, r.Params.TopK = 1, model.MaxTopK }, isParamError("top_k"), "top_k"},
		{"mask token in the prompt", func(r *engine.Request) {
			r.Prompt = append(append([]int32(nil), r.Prompt...), f.gen.MaskID)
		}, func(err error) bool { return errors.Is(err, errdefs.ErrInvalidArgument) }, "mask token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := request(t, c, "bad")
			tc.edit(&req)
			_, err := e.Generate(context.Background(), req, nil)
			if !tc.check(err) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("err %v, want one naming %q", err, tc.field)
			}
		})
	}
	req := request(t, c, "edge") // one step of a 4-token block: the LM head's top 1024 is slow under -race
	req.Params, _ = diffusion.Preset("v20")
	edge := min(diffusion.MaxTopK, model.MaxTopK-1) // the largest the LM head gives with the mask's spare
	req.Params.GenLen, req.Params.BlockLen, req.Params.Temperature, req.Params.TopK = 1, 4, 1, edge
	if _, err := e.Generate(context.Background(), req, nil); err != nil {
		t.Errorf("top_k %d (the largest allowed): %v", edge, err)
	}
}

func isParamError(field string) func(error) bool {
	return func(err error) bool {
		var pe *diffusion.ParamError
		return errors.As(err, &pe) && pe.Field == field
	}
}

// hangingStepper's steps block until release is closed (a step stuck on a slow attnd).
type hangingStepper struct {
	*engine.LocalStepper
	release chan struct{}
	entered chan struct{}
}

func (h *hangingStepper) Step(ctx context.Context, steps []engine.SeqStep) ([]model.StepOut, engine.StepInfo, error) {
	select {
	case h.entered <- struct{}{}:
	default:
	}
	<-h.release
	return h.LocalStepper.Step(ctx, steps)
}

// TestQueueTimeout: a request waiting for a slot past QueueTimeout fails with ErrOverloaded even
// while the running step hangs, and a waiting request whose context ends leaves at once; the
// running request is unharmed.
func TestQueueTimeout(t *testing.T) {
	f := loadFixture(t)
	st := &hangingStepper{LocalStepper: engine.NewLocalStepper(f.m), release: make(chan struct{}), entered: make(chan struct{}, 1)}
	e := engine.New(engine.Config{MaxActive: 1, QueueTimeout: 100 * time.Millisecond, MaskID: f.gen.MaskID, EOSID: f.gen.EOSID,
		Vocab: f.m.Cfg.Vocab, MaxContext: f.m.Cfg.MaxPositions}, st, f.tok)
	t.Cleanup(e.Stop)
	first := make(chan error, 1)
	short := request(t, f.gen.Cases[0], "running")
	short.Params.GenLen = 4
	go func() {
		_, err := e.Generate(context.Background(), short, nil)
		first <- err
	}()
	<-st.entered // the first request's step hangs
	t0 := time.Now()
	_, err := e.Generate(context.Background(), request(t, f.gen.Cases[1], "waiting"), nil)
	waited := time.Since(t0)
	if !errors.Is(err, errdefs.ErrOverloaded) || !strings.Contains(err.Error(), "queue_timeout") {
		t.Errorf("a request waiting past the queue timeout: %v, want ErrOverloaded naming queue_timeout", err)
	}
	if waited < 100*time.Millisecond || waited > 5*time.Second {
		t.Errorf("refused after %v, want about the 100ms queue timeout", waited)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := e.Generate(ctx, request(t, f.gen.Cases[1], "cancelled"), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a waiting request whose deadline passed: %v, want DeadlineExceeded", err)
	}
	if n := e.Queued(); n != 1 {
		t.Errorf("%d requests queued, want only the running one", n)
	}
	close(st.release)
	if err := <-first; err != nil {
		t.Errorf("the running request: %v", err)
	}
}
