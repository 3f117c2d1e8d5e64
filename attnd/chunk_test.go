package attnd_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/attnd"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"

	"github.com/dlmesh/dlmesh/internal/testutil"
)

// testChunk is the prefill chunk of the chunking tests: two blocks of 32.
const testChunk = 64

// prompt is n token ids of the tiny model's vocabulary, the same for the same seed.
func prompt(seed uint64, n int) []int32 {
	r := rand.New(rand.NewPCG(seed, 1))
	toks := make([]int32, n)
	for i := range toks {
		toks[i] = int32(r.IntN(8000))
	}
	return toks
}

// sameResults fails unless two step responses hold the same results bit for bit.
func sameResults(tb testing.TB, what string, got, want *pb.StepResponse) {
	tb.Helper()
	if len(got.GetResults()) != len(want.GetResults()) {
		tb.Fatalf("%s: %d results, want %d", what, len(got.GetResults()), len(want.GetResults()))
	}
	for i, g := range got.GetResults() {
		w := want.GetResults()[i]
		switch {
		case g.GetErrorCode() != 0 || w.GetErrorCode() != 0:
			tb.Errorf("%s: session %d failed: %q / %q", what, i, g.GetError(), w.GetError())
		case !bytes.Equal(g.GetIds(), w.GetIds()):
			tb.Errorf("%s: session %d: ids differ", what, i)
		case !bytes.Equal(g.GetLogits(), w.GetLogits()):
			tb.Errorf("%s: session %d: logits differ", what, i)
		case !bytes.Equal(g.GetLse(), w.GetLse()):
			tb.Errorf("%s: session %d: lse differ", what, i)
		}
	}
}

// TestChunkedPrefillParity: a long direct step (652 tokens from a mid-block start, with a short
// session beside it) cut into chunks gives bit for bit the candidates of the same step run
// whole, and so do the steps after it (the last block again, then the next block).
func TestChunkedPrefillParity(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", []int{0, 1, 2, 3, 4, 5, 6, 7})
	startExpertd(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
	chunked, cc, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, PrefillChunk: testChunk})
	whole, wc, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, PrefillChunk: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	toks := prompt(1, 704)
	edited := append([]int32(nil), toks[640:672]...)
	edited[3], edited[17] = 8190, 8190
	steps := []*pb.StepRequest{
		{Sessions: []*pb.SessionStep{
			{SessionId: "long", Tokens: toks[:20]},
			{SessionId: "short", Tokens: toks[:8], OutRows: 8, TopK: 2, InvTemperature: 1}}},
		{Sessions: []*pb.SessionStep{
			{SessionId: "short", StartPos: 8, Tokens: toks[8:16], OutRows: 8, TopK: 2, InvTemperature: 1},
			{SessionId: "long", StartPos: 20, Tokens: toks[20:672], OutRows: 32, TopK: 3, InvTemperature: 1.25}}},
		{Sessions: []*pb.SessionStep{{SessionId: "long", StartPos: 640, Tokens: edited, OutRows: 32, TopK: 3, InvTemperature: 1.25}}},
		{Sessions: []*pb.SessionStep{{SessionId: "long", StartPos: 672, Tokens: toks[672:704], OutRows: 32, TopK: 3, InvTemperature: 1.25}}},
	}
	var resps [2][]*pb.StepResponse
	for k, srv := range []struct {
		a *attnd.Server
		c pb.AttentionClient
	}{{chunked, cc}, {whole, wc}} {
		if err := srv.a.WaitServing(ctx); err != nil {
			t.Fatal(err)
		}
		for id, capLen := range map[string]int32{"long": 768, "short": 32} {
			if _, err := srv.c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: capLen}); err != nil {
				t.Fatal(err)
			}
		}
		for i, req := range steps {
			resp, err := srv.c.Step(ctx, req)
			if err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
			resps[k] = append(resps[k], resp)
		}
	}
	if n := chunked.Chunked(); n != 1 {
		t.Errorf("%d session steps chunked, want 1 (the 652-token one)", n)
	}
	if n := whole.Chunked(); n != 0 {
		t.Errorf("%d session steps chunked with chunking off", n)
	}
	for i := range steps {
		sameResults(t, fmt.Sprint("step ", i), resps[0][i], resps[1][i])
	}
	if g, w := chunked.Load().GetKvTokens(), whole.Load().GetKvTokens(); g != w || g != 704+16 {
		t.Errorf("KV tokens %d chunked, %d whole; want %d", g, w, 704+16)
	}
}

// TestChunkedStepInterleaves: a short Step sent while a long one (608 tokens) runs, queued on
// the step lock, completes before the long one when the long one is chunked (it runs right
// after the long one's first round: the lock goes to the waiting Step first), and after it
// when chunking is off. The long step is held at its first expert call until the short one
// waits, so the order does not depend on timing. It logs the short step's latency from the
// release.
func TestChunkedStepInterleaves(t *testing.T) {
	for _, tc := range []struct {
		name  string
		chunk int
		first string // the Step that completes first
	}{
		{"chunked", testChunk, "short"},
		{"whole", -1, "long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := services.NewMemRegistry()
			startExpertd(t, reg, "e0", []int{0, 1, 2, 3, 4, 5, 6, 7})
			g := startGated(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
			a, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, PrefillChunk: tc.chunk})
			// Before its third round the long step checks that the short one ran right after
			// its first: the short one counts its 8 K/V positions before it releases the lock,
			// the long one counts its chunks of 64 (one so far) between rounds.
			var rounds atomic.Int32
			var shortAfterFirst atomic.Bool
			attnd.SetBetweenRounds(a, func(_ context.Context, round int) {
				rounds.Store(int32(round + 1))
				if round == 2 {
					shortAfterFirst.Store(a.Load().GetKvTokens() == testChunk+8)
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := a.WaitServing(ctx); err != nil {
				t.Fatal(err)
			}
			for id, capLen := range map[string]int32{"long": 640, "short": 32} {
				if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: capLen}); err != nil {
					t.Fatal(err)
				}
			}
			type done struct {
				who string
				at  time.Time
				err error
			}
			dones := make(chan done, 2)
			send := func(who string, st *pb.SessionStep) {
				_, err := c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{st}})
				dones <- done{who, time.Now(), err}
			}
			go send("long", &pb.SessionStep{SessionId: "long", Tokens: prompt(2, 608), OutRows: 32, TopK: 1})
			select {
			case <-g.held: // the long step is in its first round, holding the step lock
			case <-ctx.Done():
				t.Fatal("the long step never reached the gated group")
			}
			go send("short", &pb.SessionStep{SessionId: "short", Tokens: prompt(3, 8), OutRows: 8, TopK: 1})
			testutil.WaitFor(t, "the short step waiting for the step lock", time.Minute, func() bool { return attnd.StepWaiters(a) == 1 })
			released := time.Now()
			g.release()
			first, second := <-dones, <-dones
			at := map[string]time.Duration{}
			for _, d := range []done{first, second} {
				if d.err != nil {
					t.Fatalf("%s step: %v", d.who, d.err)
				}
				at[d.who] = d.at.Sub(released).Round(time.Millisecond)
			}
			t.Logf("%s: the short step completed %v after the long one's first expert call was released, the long one %v (%d session steps chunked)",
				tc.name, at["short"], at["long"], a.Chunked())
			if first.who != tc.first {
				t.Errorf("the %s step completed first, want the %s one", first.who, tc.first)
			}
			if n := rounds.Load(); tc.chunk > 0 && (n != 9 || !shortAfterFirst.Load()) {
				t.Errorf("the long step ran %d rounds, want 9; the short step ran between its first two: %v", n, shortAfterFirst.Load())
			}
		})
	}
}

// TestChunkedStepCancelled: a chunked step whose context ends between two rounds stops there
// with Canceled, leaving the cache holding the K/V of the rounds it completed (KV tokens count
// them); re-sent, the step gives what it gives uninterrupted. While it runs, a Step naming its
// session is refused for that session alone with Aborted.
func TestChunkedStepCancelled(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", []int{0, 1, 2, 3, 4, 5, 6, 7})
	startExpertd(t, reg, "e1", []int{8, 9, 10, 11, 12, 13, 14, 15})
	a, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, PrefillChunk: testChunk})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	for id, capLen := range map[string]int32{"long": 640, "ref": 640, "other": 32} {
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: capLen}); err != nil {
			t.Fatal(err)
		}
	}
	toks := prompt(4, 608)
	step := func(id string) *pb.StepRequest {
		return &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: id, Tokens: toks, OutRows: 32, TopK: 2, InvTemperature: 1}}}
	}
	want, err := c.Step(ctx, step("ref"))
	if err != nil {
		t.Fatal(err)
	}
	kv0 := a.Load().GetKvTokens()

	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	var busyErr error
	var busyResp *pb.StepResponse
	attnd.SetBetweenRounds(a, func(rctx context.Context, round int) {
		switch round {
		case 2: // the session is the running step's: refused alone
			if _, busyErr = c.Step(ctx, step("long")); busyErr == nil {
				return
			}
			busyResp, _ = c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{step("long").Sessions[0],
				{SessionId: "other", Tokens: toks[:8], OutRows: 8, TopK: 1}}})
		case 3: // 3 rounds done: 3 chunks of 64 tokens written
			scancel()
			<-rctx.Done() // the server sees it before it takes the lock again
		}
	})
	_, err = c.Step(sctx, step("long"))
	if status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled chunked step: %v, want Canceled", err)
	}
	if status.Code(busyErr) != codes.Aborted {
		t.Errorf("step of a session in a running step: %v, want Aborted", busyErr)
	}
	if r := busyResp.GetResults(); len(r) != 2 || r[0].GetErrorCode() != int32(codes.Aborted) || r[1].GetErrorCode() != 0 || len(r[1].GetIds()) == 0 {
		t.Errorf("busy session beside a good one: %v, want the busy one Aborted, the other answered", r)
	}
	testutil.WaitFor(t, "the cancelled step's K/V counted", time.Minute, func() bool { return a.Load().GetKvTokens() == kv0+8+3*testChunk })
	attnd.SetBetweenRounds(a, nil)
	got, err := c.Step(ctx, step("long"))
	if err != nil {
		t.Fatalf("the re-sent step: %v", err)
	}
	sameResults(t, "re-sent step", got, want)
}
