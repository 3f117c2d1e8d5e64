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

// TestMeshAttndLossMigratesSessions runs one gateway over two attnd instances with six concurrent
// streams (the gateway spreads the sessions over both), then stops one attnd hard in the middle
// of the run. The gateway reopens the lost sessions on the attnd left, re-prefills their windows
// and re-runs the interrupted step: no stream fails, and every stream equals the reference step
// for step. It logs the figures: migrations, re-prefill time, the worst gap between two step
// events of a stream.
func TestMeshAttndLossMigratesSessions(t *testing.T) {
	t.Run("kill", func(t *testing.T) { attndLoss(t, false) })
	// A graceful stop (SIGTERM) drains: attnd-1 leaves discovery, the gateway migrates its
	// sessions before its next step, and attnd-1 stops once they are gone, well within its
	// stop deadline and without cutting a call.
	t.Run("graceful", func(t *testing.T) { attndLoss(t, true) })
}

func attndLoss(t *testing.T, graceful bool) {
	f := fixtures.LoadGen(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := mesh.Up(ctx, mesh.Config{ModelDir: tinyDir, Listen: "127.0.0.1:0", Attnd: 2, DrainTimeout: 8 * time.Second})
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
	var stopErr error
	var stopTook time.Duration
	go func() {
		started.Wait()
		onVictim.Store(int32(m.Attnds[1].Sessions()))
		kctx, kcancel := context.WithCancel(context.Background())
		if !graceful {
			kcancel() // no grace: in-flight steps are cut off
		}
		t0 := time.Now()
		stopErr = m.Attnds[1].Shutdown(kctx)
		stopTook = time.Since(t0)
		kcancel()
		close(kill)
	}()
	got := make([]*streamed, len(cases))
	errs := make([]error, len(cases))
	gaps := make([]time.Duration, len(cases))
	var wg sync.WaitGroup
	for i, ci := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			steps := 0
			s := &streamed{}
			last := time.Now()
			fin, err := c.Generate(context.Background(), request(f.Cases[ci], fmt.Sprint("loss-", i)), func(ev *pb.GenerateEvent) error {
				if st := ev.GetStep(); st != nil {
					s.steps = append(s.steps, st)
					if steps > 0 {
						gaps[i] = max(gaps[i], time.Since(last))
					}
					last = time.Now()
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
	failed, migrated := 0, 0
	var reprefill float64
	var worst time.Duration
	for i, ci := range cases {
		worst = max(worst, gaps[i])
		if errs[i] != nil {
			failed++
			t.Errorf("stream %d (case %d) failed: %v", i, ci, errs[i])
			continue
		}
		u := got[i].final.GetUsage()
		migrated += int(u.GetMigrations())
		reprefill = max(reprefill, u.GetReprefillMs())
		t.Run(fmt.Sprint("case", ci), func(t *testing.T) { checkCase(t, f, f.Cases[ci], got[i]) })
	}
	t.Logf("attnd-1 stopped (graceful %v) with %d of %d sessions: %d streams failed, %d migrations (gateway counter %d), worst re-prefill %.1f ms, worst step gap %v",
		graceful, victims, len(cases), failed, migrated, m.Gateway.Migrations(), reprefill, worst)
	if migrated < victims || m.Gateway.Migrations() != int64(migrated) {
		t.Errorf("%d migrations in the streams' usage (gateway counter %d), want at least the %d sessions on the stopped attnd",
			migrated, m.Gateway.Migrations(), victims)
	}
	if graceful {
		t.Logf("graceful stop of attnd-1 took %v: %v", stopTook, stopErr)
		if stopErr != nil || stopTook >= 8*time.Second {
			t.Errorf("graceful stop of attnd-1: %v after %v, want a clean stop once its sessions migrated (before the 8 s drain timeout)", stopErr, stopTook)
		}
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
	if graceful {
		return
	}
	// no attnd left: a request fails with UNAVAILABLE saying so
	kctx, kcancel := context.WithCancel(context.Background())
	kcancel()
	_ = m.Attnds[0].Shutdown(kctx)
	_, err = generate(context.Background(), c, request(f.Cases[1], "no-attnd"))
	if code := status.Code(err); code != codes.Unavailable || !strings.Contains(err.Error(), "attnd") {
		t.Errorf("a request with no attnd left: %v (code %v), want UNAVAILABLE naming the missing attnd", err, code)
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
