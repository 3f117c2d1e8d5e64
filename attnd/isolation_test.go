package attnd_test

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// TestStepRefusesOneSessionAlone: a step whose sessions include bad ones (an unknown session,
// top_k past the LM head's bound, a NaN or infinite inv_temperature, a start past the cache,
// an oversized session id) answers those with their own error code and message, and runs the
// good session exactly as a step of it alone would.
func TestStepRefusesOneSessionAlone(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", model.AllExperts(16))
	a, c, _ := startAttnd(t, reg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	toks := []int32{952, 2311, 449, 945}
	good := func(id string) *pb.SessionStep {
		return &pb.SessionStep{SessionId: id, Tokens: toks, OutRows: 4, TopK: 2, InvTemperature: 1}
	}
	for _, id := range []string{"alone", "good", "topk", "nan", "inf", "past"} {
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 32}); err != nil {
			t.Fatal(err)
		}
	}
	alone, err := c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{good("alone")}})
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		step  *pb.SessionStep
		code  codes.Code
		field string
	}{
		{&pb.SessionStep{SessionId: "never", Tokens: toks, OutRows: 1, TopK: 1}, codes.NotFound, "never"},
		{&pb.SessionStep{SessionId: "topk", Tokens: toks, OutRows: 1, TopK: 5001, InvTemperature: 1}, codes.InvalidArgument, "top_k 5001"},
		{&pb.SessionStep{SessionId: "nan", Tokens: toks, OutRows: 1, TopK: 1, InvTemperature: float32(math.NaN())}, codes.InvalidArgument, "inv_temperature NaN"},
		{&pb.SessionStep{SessionId: "inf", Tokens: toks, OutRows: 1, TopK: 1, InvTemperature: float32(math.Inf(1))}, codes.InvalidArgument, "inv_temperature +Inf"},
		{&pb.SessionStep{SessionId: "past", StartPos: 9, Tokens: toks, OutRows: 1, TopK: 1}, codes.InvalidArgument, "start_pos 9"},
		{&pb.SessionStep{SessionId: strings.Repeat("x", attnd.MaxSessionIDBytes+1), Tokens: toks, OutRows: 1}, codes.InvalidArgument, "session_id has"},
	}
	req := &pb.StepRequest{}
	for i, b := range bad {
		req.Sessions = append(req.Sessions, b.step)
		if i == 2 {
			req.Sessions = append(req.Sessions, good("good"))
		}
	}
	resp, err := c.Step(ctx, req)
	if err != nil {
		t.Fatalf("a step with one good session among bad ones failed as a whole: %v", err)
	}
	res := resp.GetResults()
	if len(res) != len(bad)+1 {
		t.Fatalf("%d results for %d sessions", len(res), len(bad)+1)
	}
	k := 0
	for _, r := range res {
		if r.GetSessionId() == "good" {
			want := alone.GetResults()[0]
			if r.GetErrorCode() != 0 || !slices.Equal(r.GetIds(), want.GetIds()) || !slices.Equal(r.GetLogits(), want.GetLogits()) {
				t.Errorf("the good session: code %d %q, ids equal %v: want the result of its step alone",
					r.GetErrorCode(), r.GetError(), slices.Equal(r.GetIds(), want.GetIds()))
			}
			continue
		}
		b := bad[k]
		k++
		if codes.Code(r.GetErrorCode()) != b.code || !strings.Contains(r.GetError(), b.field) || len(r.GetIds()) != 0 {
			t.Errorf("session %.20q: code %v %q, want %v naming %q and no output", r.GetSessionId(), codes.Code(r.GetErrorCode()), r.GetError(), b.code, b.field)
		}
	}
	// Every session bad: the step fails as a whole, with the first one's code.
	_, err = c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{bad[1].step}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "top_k") {
		t.Errorf("a step of one bad session: %v, want InvalidArgument naming top_k", err)
	}
}

// TestOpenBounds: Open refuses an oversized session id, and refuses with ResourceExhausted
// naming the limit once the sessions' windows would reserve more than max_kv_tokens positions
// or more than max_sessions sessions; Info reports both limits; closing frees the budget.
func TestOpenBounds(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", model.AllExperts(16))
	_, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, MaxKVTokens: 100, MaxSessions: 3})
	ctx := context.Background()
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: strings.Repeat("s", attnd.MaxSessionIDBytes+1), Capacity: 32}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "session_id") {
		t.Errorf("open with a long session id: %v, want InvalidArgument naming session_id", err)
	}
	for _, id := range []string{"a", "b", "c"} {
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 32}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Open(ctx, &pb.OpenRequest{SessionId: "d", Capacity: 4, BlockLength: 4})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max_sessions 3") {
		t.Errorf("a 4th session: %v, want ResourceExhausted naming max_sessions", err)
	}
	if _, err := c.Close(ctx, &pb.CloseRequest{SessionId: "c"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Open(ctx, &pb.OpenRequest{SessionId: "d", Capacity: 64}) // 64 + 64 reserved > 100
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max_kv_tokens 100") {
		t.Errorf("a window past the KV budget: %v, want ResourceExhausted naming max_kv_tokens", err)
	}
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: "d", Capacity: 36}); err != nil {
		t.Errorf("a window that fits the KV budget: %v", err)
	}
	info, err := c.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if l := info.GetLoad(); l.GetMaxSessions() != 3 || l.GetMaxKvTokens() != 100 || l.GetKvCapacityTokens() != 100 {
		t.Errorf("load %v: want max_sessions 3, max_kv_tokens 100, 100 positions reserved", l)
	}
}
