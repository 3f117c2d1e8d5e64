package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/internal/testutil"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// TestAttndKill9Failover runs the mesh as real processes — two expertd (experts 0-7 and 8-15),
// two attnd, one gateway given both attnd. First one attnd is stopped (SIGSTOP) under three
// streams: its steps fail after the gateway's stall deadline (seconds, not the 60 s step
// timeout), its sessions migrate, the streams complete with the reference output, and once
// continued the gateway's probe takes it back. Then it is killed with SIGKILL while six streams
// run with sessions on both: the gateway reopens the lost sessions on the attnd left and
// re-prefills them, so every stream completes with the reference output; its log and its
// dlmesh_session_migrations_total show the migrations, and a new request succeeds. Then the attnd
// left is killed too: a request fails with UNAVAILABLE naming the attnd; restarted on its port,
// the attnd serves new requests again within a bounded wait (the gateway's breaker and dial
// recover).
func TestAttndKill9Failover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts five processes; skipped with -short")
	}
	bin := buildBinary(t)
	model := filepath.Join("..", "..", "models", "llada2-tiny-go")
	addrRE := regexp.MustCompile(`(127\.0\.0\.1:\d+)`)
	e0 := startProc(t, bin, addrRE, "expertd serving", "expertd", "--model", model, "--experts", "0-7")
	e1 := startProc(t, bin, addrRE, "expertd serving", "expertd", "--model", model, "--experts", "8-15")
	startAttnd := func(extra ...string) *proc {
		return startProc(t, bin, addrRE, "attnd serving", append([]string{"attnd", "--model", model, "--expertd", e0.addr + "," + e1.addr}, extra...)...)
	}
	a0, a1 := startAttnd(), startAttnd()
	gw := startProc(t, bin, addrRE, "gateway serving", "gateway", "--log-format", "json", "--model", model, "--attnd", a0.addr+","+a1.addr,
		"--listen", "127.0.0.1:0", "--http-listen=", "--metrics-listen", "127.0.0.1:0", "--step-timeout", "60s")
	metricsLine, ok := gw.waitLog(10*time.Second, func(l string) bool { return logRecord(l)["msg"] == "metrics" })
	if !ok {
		t.Fatalf("the gateway logged no metrics endpoint:\n%s", strings.Join(gw.lines(), "\n"))
	}
	metricsAddr := strings.TrimSuffix(strings.TrimPrefix(fmt.Sprint(logRecord(metricsLine)["url"]), "http://"), "/metrics")

	c, err := gateway.Dial(gw.addr, services.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	f := fixtures.LoadGen(t)
	tok, err := tokenizer.Load(model)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	t.Run("stall-one-of-two", func(t *testing.T) {
		// SIGSTOP: the attnd is alive (its connections stay open) but answers nothing. Once
		// the gateway has a p99 of the steps (20 answered, every stream well into its blocks),
		// a step to it fails after the stall deadline (2 s floor, or 8 × p99 per row × rows),
		// not the 60 s step timeout, and its sessions move to the other attnd.
		cases := []int{0, 3, 6}
		res := runStreams(ctx, t, c, f, cases, "stall-", 12, func() {
			if err := a1.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			t.Logf("stopped attnd %s (pid %d)", a1.addr, a1.cmd.Process.Pid)
		})
		if err := a1.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		// the gateway probes the stalled attnd back (its health, every second): once it
		// answers, new sessions go to it again
		if _, ok := gw.waitLog(20*time.Second, func(l string) bool { return logRecord(l)["msg"] == "gateway: a stalled attnd answers again" }); !ok {
			t.Fatalf("the gateway never took the continued attnd back:\n%s", strings.Join(gw.lines(), "\n"))
		}
		migrated := 0
		for i, ci := range cases {
			if res.errs[i] != nil {
				t.Errorf("stream %d (case %d) failed: %v", i, ci, res.errs[i])
				continue
			}
			migrated += int(res.finals[i].GetUsage().GetMigrations())
			checkFinal(t, tok, f.Cases[ci], res.finals[i], fmt.Sprint("stall stream ", i))
		}
		worst := slices.Max(append(slices.Concat(res.gaps...), 0))
		t.Logf("SIGSTOP of 1 of 2 attnd under %d streams: %d failed, %d migrations, worst step gap %v (step timeout 60 s)",
			len(cases), countErrs(res.errs), migrated, worst.Round(time.Millisecond))
		if migrated == 0 {
			t.Errorf("no session migrated off the stopped attnd")
		}
		// the bound: well under the step timeout a step without the stall deadline would wait
		if worst > 20*time.Second {
			t.Errorf("worst step gap %v with a stopped attnd: the stall deadline did not cut the 60 s step timeout", worst)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("kill-one-of-two", func(t *testing.T) {
		cases := []int{0, 2, 3, 5, 6, 8} // the slower modes: many steps left after the kill
		// what the earlier subtest left: sessions an attnd still holds (the stopped one's, until
		// their lease ends), migrations logged and counted
		sessions := func() (n [2]int32) {
			for i, a := range []*proc{a0, a1} {
				load, err := instanceLoad(ctx, services.KindAttnd, a.addr, services.ClientConfig{}, 5*time.Second)
				if err != nil {
					t.Fatalf("attnd %s Info: %v", a.addr, err)
				}
				n[i] = load.GetSessions()
			}
			return n
		}
		migrationLines := func() (logged []map[string]any) {
			for _, l := range gw.lines() {
				if r := logRecord(l); r["msg"] == "session migrated" {
					logged = append(logged, r)
				}
			}
			return logged
		}
		base, loggedBefore := sessions(), len(migrationLines())
		countedBefore := sum(series(scrape(t, metricsAddr), "dlmesh_session_migrations_total", nil))
		var held [2]int32
		res := runStreams(ctx, t, c, f, cases, "kill9-", 1, func() {
			now := sessions()
			for i := range held {
				held[i] = now[i] - base[i]
			}
			a1.kill9(t)
			t.Logf("killed attnd %s (pid %d) holding %d of the sessions (the other attnd %d)", a1.addr, a1.cmd.Process.Pid, held[1], held[0])
		})
		finals, errs, gaps := res.finals, res.errs, res.gaps
		if held[0] == 0 || held[1] == 0 {
			t.Errorf("sessions per attnd at the kill %v: the gateway did not spread them", held)
		}

		migrated := 0
		var reprefill float64
		for i, ci := range cases {
			cs := f.Cases[ci]
			if errs[i] != nil {
				t.Errorf("stream %d (case %d, %s) failed: %v", i, ci, cs.Mode, errs[i])
				continue
			}
			u := finals[i].GetUsage()
			migrated += int(u.GetMigrations())
			reprefill = max(reprefill, u.GetReprefillMs())
			checkFinal(t, tok, cs, finals[i], fmt.Sprintf("stream %d (case %d, %s, %d migrations)", i, ci, cs.Mode, u.GetMigrations()))
			t.Logf("stream %d (case %d, %-3s): %d migrations, re-prefill %.1f ms, gap between step events: median %v, worst %v",
				i, ci, cs.Mode, u.GetMigrations(), u.GetReprefillMs(), medianGap(gaps[i]).Round(time.Millisecond), slices.Max(append(gaps[i], 0)).Round(time.Millisecond))
		}
		// every session on the killed attnd was still running (dozens of steps left): each migrated
		if migrated < int(held[1]) || migrated == 0 {
			t.Errorf("%d migrations in the streams' usage, want at least the %d sessions on the killed attnd (and at least 1)", migrated, held[1])
		}
		logged := migrationLines()[loggedBefore:]
		if len(logged) != migrated {
			t.Errorf("the gateway logged %d \"session migrated\" lines, the streams report %d migrations:\n%s", len(logged), migrated, strings.Join(gw.lines(), "\n"))
		}
		mfs := scrape(t, metricsAddr)
		if n := sum(series(mfs, "dlmesh_session_migrations_total", nil)) - countedBefore; n != float64(migrated) {
			t.Errorf("dlmesh_session_migrations_total %v, the streams report %d migrations", n, migrated)
		}
		all := slices.Concat(gaps...)
		worst := slices.Max(append(all, 0))
		t.Logf("kill -9 of 1 of 2 attnd under %d streams: %d failed, %d migrations (logged %d), worst re-prefill %.1f ms, step gap median %v, worst %v",
			len(cases), countErrs(errs), migrated, len(logged), reprefill, medianGap(all).Round(time.Millisecond), worst.Round(time.Millisecond))

		checkGenerate(ctx, t, c, tok, f.Cases[1], "after-kill9")
	})
	if t.Failed() {
		return
	}

	t.Run("restart-the-last", func(t *testing.T) {
		a0.kill9(t)
		t0 := time.Now()
		_, err := c.Generate(ctx, fixtureRequest(f.Cases[1], "no-attnd"), nil)
		if code := status.Code(err); code != codes.Unavailable || !strings.Contains(err.Error(), "attnd") {
			t.Errorf("a request with every attnd killed: %v (code %v), want UNAVAILABLE naming the attnd", err, code)
		}
		t.Logf("with no attnd left a request failed after %v: %v", time.Since(t0).Round(time.Millisecond), err)
		a0 = startAttnd("--listen", a0.addr)
		// The gateway's breaker on a0 opened while it was down; an Open that finds every breaker
		// open checks their attnd's health and closes the breaker of one that serves, and the
		// gateway re-dials a0 at least every second (services.DefaultReconnectBackoff): 30 s is
		// a bound for a loaded machine.
		tries := 0
		took := testutil.WaitFor(t, "a request succeeds after attnd restarted on "+a0.addr, 30*time.Second, func() bool {
			tries++
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			defer rcancel()
			_, err := c.Generate(rctx, &pb.GenerateRequest{RequestId: fmt.Sprint("probe-", tries), Input: &pb.GenerateRequest_Prompt{Prompt: "func main() {"},
				Params: &pb.DecodeParams{Mode: "s", GenLength: 8, BlockLength: 8}}, nil)
			return err == nil
		})
		t.Logf("attnd restarted on %s: the first request succeeded %v after it was serving (%d tries)", a0.addr, took.Round(time.Millisecond), tries)
		checkGenerate(ctx, t, c, tok, f.Cases[4], "after-restart")
	})
}

// streamsResult is what runStreams' streams ended with, by stream.
type streamsResult struct {
	finals []*pb.FinalEvent
	errs   []error
	gaps   [][]time.Duration // between two step events
}

// runStreams runs the fixture cases as concurrent streams (request ids prefix + index); once
// every stream has had minSteps step events it calls during, then waits for every stream.
func runStreams(ctx context.Context, t *testing.T, c *gateway.Client, f fixtures.GenFile, cases []int, prefix string, minSteps int, during func()) streamsResult {
	t.Helper()
	n := len(cases)
	res := streamsResult{finals: make([]*pb.FinalEvent, n), errs: make([]error, n), gaps: make([][]time.Duration, n)}
	var started sync.WaitGroup // every stream has had minSteps step events (or ended)
	started.Add(n)
	var wg sync.WaitGroup
	for i, ci := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			steps := 0
			var last time.Time
			res.finals[i], res.errs[i] = c.Generate(ctx, fixtureRequest(f.Cases[ci], fmt.Sprint(prefix, i)), func(ev *pb.GenerateEvent) error {
				if ev.GetStep() == nil {
					return nil
				}
				if steps > 0 {
					res.gaps[i] = append(res.gaps[i], time.Since(last))
				}
				last = time.Now()
				if steps++; steps == minSteps {
					started.Done()
				}
				return nil
			})
			if steps < minSteps {
				started.Done()
			}
		}()
	}
	started.Wait()
	during()
	wg.Wait()
	return res
}

// checkFinal compares a request's final event with fixture case cs.
func checkFinal(t *testing.T, tok *tokenizer.Tokenizer, cs fixtures.GenCase, got *pb.FinalEvent, what string) {
	t.Helper()
	ids := cs.IDs[:min(len(cs.IDs), cs.GenLength)] // a request returns the window's first gen_length
	if !slices.Equal(got.GetTokenIds(), ids) || got.GetText() != tok.Decode(ids) || int(got.GetUsage().GetForwards()) != cs.Forwards {
		t.Errorf("%s: %d forwards, ids %v\nreference: %d forwards, ids %v", what, got.GetUsage().GetForwards(), got.GetTokenIds(), cs.Forwards, ids)
	}
}

// fixtureRequest is the Generate request of a fixture case.
func fixtureRequest(c fixtures.GenCase, id string) *pb.GenerateRequest {
	return &pb.GenerateRequest{RequestId: id, Input: &pb.GenerateRequest_Prompt{Prompt: c.Prompt},
		Params: &pb.DecodeParams{Mode: c.Mode, GenLength: int32(c.GenLength), BlockLength: int32(c.BlockLength)}}
}

// checkGenerate runs fixture case c through the gateway and compares it with the reference.
func checkGenerate(ctx context.Context, t *testing.T, c *gateway.Client, tok *tokenizer.Tokenizer, cs fixtures.GenCase, id string) {
	t.Helper()
	got, err := c.Generate(ctx, fixtureRequest(cs, id), nil)
	if err != nil {
		t.Fatalf("request %s: %v", id, err)
	}
	checkFinal(t, tok, cs, got, "request "+id)
}

// logRecord parses one line of a --log-format json log (nil when it is not one).
func logRecord(line string) map[string]any {
	var r map[string]any
	if json.Unmarshal([]byte(line), &r) != nil {
		return nil
	}
	return r
}

// medianGap is the middle of ds (0 when empty).
func medianGap(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func countErrs(errs []error) int {
	n := 0
	for _, err := range errs {
		if err != nil {
			n++
		}
	}
	return n
}
