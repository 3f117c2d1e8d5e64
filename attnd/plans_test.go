package attnd_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// TestStepReusesPlan: the denoising steps of a block reuse the micro-batch's prepared step and
// answer exactly what steps planned afresh answer (the same session batched with another one
// each time, so that no step fits an earlier one); the plans of a prefill are not kept, and
// closing the sessions drops their plans.
func TestStepReusesPlan(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", model.AllExperts(16))
	a, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, MicroBatches: 1})
	ctx := context.Background()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := a.WaitServing(wctx); err != nil {
		t.Fatal(err)
	}
	prompt := make([]int32, 40)
	for i := range prompt {
		prompt[i] = int32(100 + 7*i)
	}
	sessions := []string{"a", "b0", "b1", "b2", "b3"}
	for _, id := range sessions {
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 128}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: id, Tokens: prompt[:32]}}}); err != nil {
			t.Fatal(err)
		}
	}
	if idle, _ := attnd.PlanStats(a); idle != 0 {
		t.Fatalf("%d plans kept after prefills", idle)
	}
	block := func(i int) []int32 {
		b := slices.Clone(prompt[32:])
		for j := range b {
			b[j] += int32(i * j)
		}
		return append(b, make([]int32, 24)...)
	}
	step := func(ids []string, i int) map[string]*pb.SessionResult {
		req := &pb.StepRequest{}
		for _, id := range ids {
			req.Sessions = append(req.Sessions, &pb.SessionStep{SessionId: id, StartPos: 32, Tokens: block(i), OutRows: 32, TopK: 3})
		}
		resp, err := c.Step(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*pb.SessionResult{}
		for _, r := range resp.GetResults() {
			out[r.GetSessionId()] = r
		}
		return out
	}
	const steps = 4
	var want []*pb.SessionResult
	for i := range steps { // the reference: "a" with another session, a new shape each time
		want = append(want, step([]string{sessions[1+i], "a"}, i)["a"])
	}
	if _, reused := attnd.PlanStats(a); reused != 0 {
		t.Fatalf("the reference steps reused %d plans", reused)
	}
	_, reusedBefore := attnd.PlanStats(a)
	for i := range steps {
		got := step([]string{"a"}, i)["a"]
		if !slices.Equal(got.GetIds(), want[i].GetIds()) || !slices.Equal(got.GetLogits(), want[i].GetLogits()) || !slices.Equal(got.GetLse(), want[i].GetLse()) {
			t.Fatalf("step %d on a reused plan differs from a fresh plan's", i)
		}
	}
	if _, reused := attnd.PlanStats(a); reused-reusedBefore < steps-1 {
		t.Fatalf("%d of %d same-shape steps reused the plan, want at least %d", reused-reusedBefore, steps, steps-1)
	}
	for _, id := range sessions {
		if _, err := c.Close(ctx, &pb.CloseRequest{SessionId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if idle, _ := attnd.PlanStats(a); idle != 0 {
		t.Fatalf("%d plans kept after their sessions closed", idle)
	}
}

// TestIdleTrimDropsBuffers: what the idle trim runs drops the idle plans and fan-out buffers,
// and the next step allocates new ones and answers as before.
func TestIdleTrimDropsBuffers(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", model.AllExperts(16))
	a, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, MicroBatches: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: "s", Capacity: 64}); err != nil {
		t.Fatal(err)
	}
	req := &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: "s", Tokens: slices.Repeat([]int32{7}, 32), OutRows: 32, TopK: 2}}}
	first, err := c.Step(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if idle, _ := attnd.PlanStats(a); idle != 1 || attnd.IdleBuffers(a) == 0 {
		t.Fatalf("after a step: %d idle plans, %d idle buffers; want 1 and some", idle, attnd.IdleBuffers(a))
	}
	attnd.DropIdle(a)
	if idle, _ := attnd.PlanStats(a); idle != 0 || attnd.IdleBuffers(a) != 0 {
		t.Fatalf("after the idle trim: %d idle plans, %d idle buffers; want none", idle, attnd.IdleBuffers(a))
	}
	again, err := c.Step(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.GetResults()[0].GetLogits(), first.GetResults()[0].GetLogits()) {
		t.Fatal("the step after the idle trim answers differently")
	}
}
