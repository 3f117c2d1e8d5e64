package mesh_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/internal/realformat"
	"github.com/dlmesh/dlmesh/mesh"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"

	"github.com/dlmesh/dlmesh/internal/testutil"
)

// TestMeshMatchesReference runs the nine fixture cases one at a time through gateway → attnd →
// two expertd groups over loopback gRPC.
func TestMeshMatchesReference(t *testing.T) {
	f := fixtures.LoadGen(t)
	m := sharedMesh(t)
	c := dialGateway(t, m)
	for i, gc := range f.Cases {
		t.Run(fmt.Sprintf("%d-%s", i/3, gc.Mode), func(t *testing.T) {
			s, err := generate(context.Background(), c, request(gc, fmt.Sprint("seq", i)))
			if err != nil {
				t.Fatal(err)
			}
			checkCase(t, f, gc, s)
		})
	}
	if n := m.Attnd.Sessions(); n != 0 {
		t.Errorf("%d attnd sessions left open", n)
	}
}

// TestMeshConcurrentStreams runs the nine cases (three prompts × three modes) as concurrent
// streams: every attnd step carries several sessions at different positions and parameters.
func TestMeshConcurrentStreams(t *testing.T) {
	f := fixtures.LoadGen(t)
	m := sharedMesh(t)
	c := dialGateway(t, m)
	got := make([]*streamed, len(f.Cases))
	errs := make([]error, len(f.Cases))
	var wg sync.WaitGroup
	for i, gc := range f.Cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = generate(context.Background(), c, request(gc, fmt.Sprint("par", i)))
		}()
	}
	wg.Wait()
	for i, gc := range f.Cases {
		t.Run(fmt.Sprintf("%d-%s", i/3, gc.Mode), func(t *testing.T) {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			checkCase(t, f, gc, got[i])
		})
	}
	waitSessions(t, m, 0)
}

// waitSessions waits until attnd and the gateway hold n sessions (a closing session is released
// by the engine right after the stream ends).
func waitSessions(t *testing.T, m *mesh.Mesh, n int) {
	t.Helper()
	testutil.WaitFor(t, fmt.Sprintf("attnd and the gateway holding %d sessions", n), 5*time.Second, func() bool {
		return m.Attnd.Sessions() == n && m.Gateway.Stepper().Sessions() == n
	})
}

// TestMeshCancelFreesSession cancels a stream after three steps: the engine drops the request at
// the next step boundary and the attnd session is closed; the mesh keeps serving.
func TestMeshCancelFreesSession(t *testing.T) {
	f := fixtures.LoadGen(t)
	m := sharedMesh(t)
	c := dialGateway(t, m)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, after := request(f.Cases[2], "cancel"), request(f.Cases[0], "after")
	steps := 0
	_, err := c.Generate(ctx, req, func(ev *pb.GenerateEvent) error {
		if ev.GetStep() != nil {
			steps++
			if steps == 3 {
				if n := m.Attnd.Sessions(); n != 1 {
					t.Errorf("%d attnd sessions during the stream, want 1", n)
				}
				cancel()
			}
		}
		return nil
	})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream: err %v, want Canceled", err)
	}
	waitSessions(t, m, 0)
	s, err := generate(context.Background(), c, after)
	if err != nil {
		t.Fatal(err)
	}
	checkCase(t, f, f.Cases[0], s)
}

// shortRequest is a request of a few small blocks (block lengths other than the model's).
func shortRequest(mode string, gen, block int32, id string) *pb.GenerateRequest {
	return &pb.GenerateRequest{RequestId: id, Input: &pb.GenerateRequest_Prompt{Prompt: "func Reverse(s string) string {"},
		Params: &pb.DecodeParams{Mode: mode, GenLength: gen, BlockLength: block}}
}

// TestMeshRaceConcurrentShort runs short requests with different modes and block lengths first
// one at a time, then all at once: the concurrent streams must give the same tokens and forwards.
// It is the race build's concurrency check (cheap enough under -race).
func TestMeshRaceConcurrentShort(t *testing.T) {
	m := sharedMesh(t)
	c := dialGateway(t, m)
	var reqs []*pb.GenerateRequest
	for i, mode := range []string{"q", "s", "v20"} {
		for j, bl := range []int32{4, 8} {
			reqs = append(reqs, shortRequest(mode, 8, bl, fmt.Sprintf("short-%d-%d", i, j)))
		}
	}
	alone := make([]*streamed, len(reqs))
	for i, r := range reqs {
		var err error
		if alone[i], err = generate(context.Background(), c, r); err != nil {
			t.Fatal(err)
		}
	}
	together := make([]*streamed, len(reqs))
	errs := make([]error, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			together[i], errs[i] = generate(context.Background(), c, r)
		}()
	}
	wg.Wait()
	for i := range reqs {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		a, b := alone[i].final, together[i].final
		if !slices.Equal(a.GetTokenIds(), b.GetTokenIds()) || a.GetUsage().GetForwards() != b.GetUsage().GetForwards() || len(alone[i].steps) != len(together[i].steps) {
			t.Errorf("request %d: alone %v in %d forwards, concurrent %v in %d", i, a.GetTokenIds(), a.GetUsage().GetForwards(),
				b.GetTokenIds(), b.GetUsage().GetForwards())
		}
	}
	waitSessions(t, m, 0)
}

// TestMeshDeadline: a stream whose deadline passes mid-generation ends with DeadlineExceeded and
// frees its session.
func TestMeshDeadline(t *testing.T) {
	f := fixtures.LoadGen(t)
	m := sharedMesh(t)
	c := dialGateway(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := c.Generate(ctx, request(f.Cases[2], "deadline"), func(ev *pb.GenerateEvent) error {
		<-ctx.Done() // a slow reader: the deadline passes while the stream runs
		return nil
	})
	if code := status.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("err %v, want DeadlineExceeded", err)
	}
	waitSessions(t, m, 0)
}

func TestMeshRejectsBadRequests(t *testing.T) {
	m := sharedMesh(t)
	c := dialGateway(t, m)
	ptr := func(v float64) *float64 { return &v }
	prompt := &pb.GenerateRequest_Prompt{Prompt: "func main() {"}
	for _, tc := range []struct {
		name  string
		req   *pb.GenerateRequest
		field string // the error message must name it
	}{
		{"no input", &pb.GenerateRequest{}, "input"},
		{"empty prompt", &pb.GenerateRequest{Input: &pb.GenerateRequest_Prompt{}}, "prompt"},
		{"unknown mode", &pb.GenerateRequest{Input: prompt, Params: &pb.DecodeParams{Mode: "fast"}}, "mode"},
		{"tau_mask above 1", &pb.GenerateRequest{Input: prompt, Params: &pb.DecodeParams{TauMask: ptr(2)}}, "tau_mask"},
		{"tau_edit negative", &pb.GenerateRequest{Input: prompt, Params: &pb.DecodeParams{TauEdit: ptr(-0.1)}}, "tau_edit"},
		{"gen_length negative", &pb.GenerateRequest{Input: prompt, Params: &pb.DecodeParams{GenLength: -4}}, "gen_length"},
		{"block_length too long", &pb.GenerateRequest{Input: prompt, Params: &pb.DecodeParams{BlockLength: 5000}}, "block_length"},
		{"window past the model", &pb.GenerateRequest{Input: prompt, Params: &pb.DecodeParams{GenLength: 5000}}, "gen_length"},
		{"top_p above 1", &pb.GenerateRequest{Input: prompt, Params: &pb.DecodeParams{TopP: 1.5}}, "top_p"},
		{"temperature negative", &pb.GenerateRequest{Input: prompt, Params: &pb.DecodeParams{Temperature: -1}}, "temperature"},
		{"bad chat role", &pb.GenerateRequest{Input: &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{
			Messages: []*pb.ChatMessage{{Role: "<b>", Content: "hi"}}}}}, "role"},
		{"no chat messages", &pb.GenerateRequest{Input: &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{}}}, "messages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Generate(context.Background(), tc.req, nil)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err %v, want InvalidArgument", err)
			}
			if !strings.Contains(status.Convert(err).Message(), tc.field) {
				t.Errorf("message %q does not name %s", status.Convert(err).Message(), tc.field)
			}
		})
	}
	if n := m.Attnd.Sessions(); n != 0 {
		t.Errorf("%d attnd sessions after rejected requests", n)
	}
}

// TestMeshChat: chat messages go through the default template and generate.
func TestMeshChat(t *testing.T) {
	m := sharedMesh(t)
	c := dialGateway(t, m)
	req := &pb.GenerateRequest{Input: &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{Messages: []*pb.ChatMessage{
		{Role: "system", Content: "You write Go."}, {Role: "user", Content: "Reverse a string."}}}},
		Params: &pb.DecodeParams{Mode: "s", GenLength: 8, BlockLength: 8}}
	s, err := generate(context.Background(), c, req)
	if err != nil {
		t.Fatal(err)
	}
	if s.final.GetUsage().GetPromptTokens() == 0 || s.final.GetUsage().GetForwards() == 0 || len(s.steps) == 0 {
		t.Errorf("final %v after %d steps", s.final, len(s.steps))
	}
}

// TestMeshChatRealFormat: a model directory in the real LLaDA2.x formats (possessive split regex,
// Jinja chat template) starts, and chat messages are rendered with the model's template: the
// prompt is the one chat_cases.json expects.
func TestMeshChatRealFormat(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := mesh.Up(ctx, mesh.Config{ModelDir: realformat.ModelDir(t), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("mesh close: %v", err)
		}
	})
	c := dialGateway(t, m)
	req := &pb.GenerateRequest{Input: &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{Messages: []*pb.ChatMessage{
		{Role: "user", Content: "Write a Go function that reverses a string."}}}},
		Params: &pb.DecodeParams{Mode: "s", GenLength: 8, BlockLength: 8}}
	s, err := generate(ctx, c, req)
	if err != nil {
		t.Fatal(err)
	}
	// chat_cases.json case 0: "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>…" is 38 tokens.
	if got := s.final.GetUsage().GetPromptTokens(); got != 38 {
		t.Errorf("prompt tokens %d, want 38 (the real template's rendering)", got)
	}
}

// TestMeshQueueFull: with one active slot and one queue place, a third concurrent request is
// refused with ResourceExhausted.
func TestMeshQueueFull(t *testing.T) {
	f := fixtures.LoadGen(t)
	m := upMesh(t, mesh.Config{MaxActive: 1, MaxQueue: 1})
	c := dialGateway(t, m)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = c.Generate(ctx, request(f.Cases[2], fmt.Sprint("busy", i)), nil)
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for m.Gateway.Queued() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests admitted, want 2", m.Gateway.Queued())
		}
		time.Sleep(time.Millisecond)
	}
	_, err := c.Generate(ctx, request(f.Cases[0], "third"), nil)
	cancel()
	wg.Wait()
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third request: err %v, want ResourceExhausted", err)
	}
	waitSessions(t, m, 0)
}
