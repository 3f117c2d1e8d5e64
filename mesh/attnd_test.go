package mesh_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/mesh"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// TestMeshAttndLossSparesOtherSessions runs one gateway over two attnd instances with six
// concurrent streams (the gateway spreads the sessions over both), then stops one attnd hard in
// the middle of the run. The streams whose sessions lived there fail with UNAVAILABLE naming it;
// every other stream finishes exactly as the reference; a new request is served by the attnd
// that is left, and no session leaks.
func TestMeshAttndLossSparesOtherSessions(t *testing.T) {
	f := fixtures.LoadGen(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := mesh.Up(ctx, mesh.Config{ModelDir: tinyDir, Listen: "127.0.0.1:0", Attnd: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() }) // the killed attnd reports its forced stop here
	if len(m.Attnds) != 2 || len(m.Addrs().Attnds) != 2 {
		t.Fatalf("%d attnd instances, want 2", len(m.Attnds))
	}
	c := dialGateway(t, m)

	cases := []int{0, 2, 3, 5, 6, 8} // the slower modes: enough steps left after the kill
	var started sync.WaitGroup       // every stream has made two steps
	started.Add(len(cases))
	kill := make(chan struct{})
	var onVictim atomic.Int32
	go func() {
		started.Wait()
		onVictim.Store(int32(m.Attnds[1].Sessions()))
		kctx, kcancel := context.WithCancel(context.Background())
		kcancel() // no grace: in-flight steps are cut off
		_ = m.Attnds[1].Shutdown(kctx)
		close(kill)
	}()
	got := make([]*streamed, len(cases))
	errs := make([]error, len(cases))
	var wg sync.WaitGroup
	for i, ci := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			steps := 0
			s := &streamed{}
			fin, err := c.Generate(context.Background(), request(f.Cases[ci], fmt.Sprint("loss-", i)), func(ev *pb.GenerateEvent) error {
				if st := ev.GetStep(); st != nil {
					s.steps = append(s.steps, st)
					if steps++; steps == 2 {
						started.Done()
					}
				}
				if b := ev.GetBlock(); b != nil {
					s.blocks = append(s.blocks, b)
				}
				return nil
			})
			if steps < 2 {
				started.Done()
			}
			s.final = fin
			got[i], errs[i] = s, err
		}()
	}
	wg.Wait()
	<-kill
	victims := int(onVictim.Load())
	if victims == 0 || victims == len(cases) {
		t.Fatalf("%d of %d sessions on the stopped attnd: the gateway did not spread them", victims, len(cases))
	}
	failed := 0
	for i, ci := range cases {
		if errs[i] != nil {
			failed++
			if failed == 1 {
				t.Logf("a stream on the stopped attnd: %v", errs[i])
			}
			if code := status.Code(errs[i]); code != codes.Unavailable || !strings.Contains(errs[i].Error(), "attnd-1") {
				t.Errorf("stream %d: %v (code %v), want UNAVAILABLE naming attnd-1", i, errs[i], code)
			}
			continue
		}
		t.Run(fmt.Sprint("survivor-case", ci), func(t *testing.T) { checkCase(t, f, f.Cases[ci], got[i]) })
	}
	if failed != victims {
		t.Errorf("%d streams failed, but %d sessions were on the stopped attnd", failed, victims)
	}
	after, err := generate(context.Background(), c, request(f.Cases[1], "after-loss"))
	if err != nil {
		t.Fatalf("a request after the loss: %v", err)
	}
	checkCase(t, f, f.Cases[1], after)
	deadline := time.Now().Add(5 * time.Second)
	for m.Attnds[0].Sessions() != 0 || m.Gateway.Stepper().Sessions() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("attnd-0 holds %d sessions and the gateway %d after every stream ended", m.Attnds[0].Sessions(), m.Gateway.Stepper().Sessions())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMeshBlockLengths: requests with block lengths other than the model's go through the mesh
// (attnd opens the session with the request's block length) with the in-process result, and an
// attnd refuses a block length beyond the session's capacity.
func TestMeshBlockLengths(t *testing.T) {
	m := sharedMesh(t)
	c := dialGateway(t, m)
	eng, tok := localEngine(t)
	for _, bl := range []int32{16, 64} {
		t.Run(fmt.Sprint("block", bl), func(t *testing.T) {
			a, err := generate(context.Background(), c, shortRequest("s", 32, bl, fmt.Sprint("bl-", bl)))
			if err != nil {
				t.Fatal(err)
			}
			if len(a.final.GetTokenIds()) == 0 {
				t.Fatalf("block %d: no tokens", bl)
			}
			for _, s := range a.steps {
				if n := len(s.GetChanges()); n > int(bl) {
					t.Fatalf("a step changed %d positions of a %d-token block", n, bl)
				}
			}
			want, wantSteps := engineResult(t, eng, tok, shortRequest("s", 32, bl, "ref"))
			if fmt.Sprint(a.final.GetTokenIds()) != fmt.Sprint(want) {
				t.Errorf("block %d: mesh %v, engine %v", bl, a.final.GetTokenIds(), want)
			}
			// `generate` and `run` print "block N · step M" from these: the same numbering
			var steps [][2]int
			for _, s := range a.steps {
				steps = append(steps, [2]int{int(s.GetBlock()), int(s.GetStep())})
			}
			if fmt.Sprint(steps) != fmt.Sprint(wantSteps) {
				t.Errorf("block %d: streamed (block, step) %v, engine's events %v", bl, steps, wantSteps)
			}
		})
	}
}

// engineResult runs req through eng (see localEngine): the ids, and each step event's (block, step).
func engineResult(t *testing.T, eng *engine.Engine, tok *tokenizer.Tokenizer, req *pb.GenerateRequest) ([]int32, [][2]int) {
	t.Helper()
	p, err := gateway.Params(req.GetParams())
	if err != nil {
		t.Fatal(err)
	}
	var steps [][2]int
	r, err := eng.Generate(context.Background(), engine.Request{ID: "ref", Prompt: tok.Encode(req.GetPrompt()), Params: p}, func(ev engine.Event) {
		if ev.Step != nil {
			steps = append(steps, [2]int{ev.Step.Block, ev.Step.Step})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return r.IDs, steps
}
