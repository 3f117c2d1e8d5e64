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
// two attnd, one gateway given both attnd — and kills one attnd with SIGKILL while six streams
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
		"--listen", "127.0.0.1:0", "--http-listen=", "--metrics-listen", "127.0.0.1:0")
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

	t.Run("kill-one-of-two", func(t *testing.T) {
		cases := []int{0, 2, 3, 5, 6, 8} // the slower modes: many steps left after the kill
		var started sync.WaitGroup       // every stream has had a step event
		started.Add(len(cases))
		finals := make([]*pb.FinalEvent, len(cases))
		errs := make([]error, len(cases))
		gaps := make([][]time.Duration, len(cases)) // between two step events, per stream
		var wg sync.WaitGroup
		for i, ci := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				steps := 0
				var last time.Time
				finals[i], errs[i] = c.Generate(ctx, fixtureRequest(f.Cases[ci], fmt.Sprint("kill9-", i)), func(ev *pb.GenerateEvent) error {
					if ev.GetStep() == nil {
						return nil
					}
					if steps > 0 {
						gaps[i] = append(gaps[i], time.Since(last))
					}
					last = time.Now()
					if steps++; steps == 1 {
						started.Done()
					}
					return nil
				})
				if steps == 0 {
					started.Done()
				}
			}()
		}
		started.Wait()
		var held [2]int32
		for i, a := range []*proc{a0, a1} {
			load, err := instanceLoad(ctx, services.KindAttnd, a.addr, services.ClientConfig{}, 5*time.Second)
			if err != nil {
				t.Fatalf("attnd %s Info: %v", a.addr, err)
			}
			held[i] = load.GetSessions()
		}
		a1.kill9(t)
		t.Logf("killed attnd %s (pid %d) holding %d of the sessions (the other attnd %d)", a1.addr, a1.cmd.Process.Pid, held[1], held[0])
		wg.Wait()
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
			ids := cs.IDs[:min(len(cs.IDs), cs.GenLength)] // a request returns the window's first gen_length
			if got := finals[i]; !slices.Equal(got.GetTokenIds(), ids) || got.GetText() != tok.Decode(ids) || int(u.GetForwards()) != cs.Forwards {
				t.Errorf("stream %d (case %d, %s, %d migrations): %d forwards, ids %v\nreference: %d forwards, ids %v",
					i, ci, cs.Mode, u.GetMigrations(), u.GetForwards(), got.GetTokenIds(), cs.Forwards, ids)
			}
			t.Logf("stream %d (case %d, %-3s): %d migrations, re-prefill %.1f ms, gap between step events: median %v, worst %v",
				i, ci, cs.Mode, u.GetMigrations(), u.GetReprefillMs(), medianGap(gaps[i]).Round(time.Millisecond), slices.Max(append(gaps[i], 0)).Round(time.Millisecond))
		}
		// every session on the killed attnd was still running (dozens of steps left): each migrated
		if migrated < int(held[1]) || migrated == 0 {
			t.Errorf("%d migrations in the streams' usage, want at least the %d sessions on the killed attnd (and at least 1)", migrated, held[1])
		}
		var logged []map[string]any
		for _, l := range gw.lines() {
			if r := logRecord(l); r["msg"] == "session migrated" {
				logged = append(logged, r)
			}
		}
		if len(logged) != migrated {
			t.Errorf("the gateway logged %d \"session migrated\" lines, the streams report %d migrations:\n%s", len(logged), migrated, strings.Join(gw.lines(), "\n"))
		}
		mfs := scrape(t, metricsAddr)
		if n := sum(series(mfs, "dlmesh_session_migrations_total", nil)); n != float64(migrated) {
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
		// The gateway's breaker on a0 opened while it was down and lets a probe through every
		// 5 s (services.DefaultBreakerOpenTimeout); the gateway re-dials a0 at least every
		// second (gateway.DefaultReconnectBackoff): 30 s is a bound for a loaded machine.
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
	ids := cs.IDs[:min(len(cs.IDs), cs.GenLength)]
	if !slices.Equal(got.GetTokenIds(), ids) || got.GetText() != tok.Decode(ids) || int(got.GetUsage().GetForwards()) != cs.Forwards {
		t.Errorf("request %s: %d forwards, ids %v\nreference: %d forwards, ids %v", id, got.GetUsage().GetForwards(), got.GetTokenIds(), cs.Forwards, ids)
	}
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
