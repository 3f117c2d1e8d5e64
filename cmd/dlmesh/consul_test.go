package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/consultest"

	"github.com/dlmesh/dlmesh/internal/fixtures"

	"github.com/dlmesh/dlmesh/internal/testutil"
)

// TestConsulMeshFailover runs the mesh as real processes discovering each other through a real
// Consul agent: 2 expert groups × 2 replicas, attnd, gateway. Under 8 concurrent streams one
// replica of group 0 is killed with SIGKILL (no deregistration) and a third replica of group 1
// joins: every stream completes with the reference output, and the new replica serves calls.
// Then both replicas of group 1 are killed: a stream fails fast with UNAVAILABLE naming the
// missing experts.
func TestConsulMeshFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Consul and seven processes; skipped with -short")
	}
	agent := consultest.Start(t)
	bin := buildBinary(t)
	model := filepath.Join("..", "..", "models", "llada2-tiny-go")
	addrRE := regexp.MustCompile(`(127\.0\.0\.1:\d+)`)
	consul := []string{"--consul", agent.Addr, "--model", model}
	expert := func(group, experts string, extra ...string) *proc {
		args := append([]string{"expertd", "--experts", experts, "--group", group}, consul...)
		return startProc(t, bin, addrRE, "expertd serving", append(args, extra...)...)
	}
	g0a, _ := expert("g0", "0-7"), expert("g0", "0-7")
	g1a, g1b := expert("g1", "8-15"), expert("g1", "8-15")
	at := startProc(t, bin, addrRE, "attnd serving", append([]string{"attnd"}, consul...)...)
	gw := startProc(t, bin, addrRE, "gateway serving", append([]string{"gateway", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, consul...)...)
	_ = at

	reg, err := services.NewConsulRegistry(services.ConsulConfig{Addr: agent.Addr})
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "attnd passing in Consul", 30*time.Second, func() bool {
		l, _ := reg.Instances(context.Background(), services.KindAttnd)
		return len(l) == 1
	})
	time.Sleep(500 * time.Millisecond) // the gateway's watch

	f := fixtures.LoadGen(t)
	cases := f.Cases[:8]
	type result struct {
		ids      []int32
		forwards int
		err      error
		dur      time.Duration
	}
	results := make([]result, len(cases))
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, "generate", "--addr", gw.addr, "--mode", c.Mode, "--gen", fmt.Sprint(c.GenLength), "--json", c.Prompt).Output()
			if err != nil {
				results[i].err = fmt.Errorf("%v: %s", err, exitStderr(err))
				return
			}
			var got struct {
				IDs      []int32 `json:"ids"`
				Forwards int     `json:"forwards"`
			}
			results[i].err = json.Unmarshal(out, &got)
			results[i].ids, results[i].forwards, results[i].dur = got.IDs, got.Forwards, time.Since(t0)
		}()
	}
	// mid-run: kill a replica of group 0 without deregistering, and add a third to group 1
	time.Sleep(3 * time.Second)
	killedAt := time.Since(start)
	if err := g0a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	traceFile := filepath.Join(t.TempDir(), "g1c.jsonl")
	before := map[string]bool{}
	if l, err := reg.Instances(context.Background(), services.KindExpertd); err == nil {
		for _, in := range l {
			before[in.ID] = true
		}
	}
	joined := time.Now()
	g1c := expert("g1", "8-15", "--trace-file", traceFile)
	joinReady := time.Since(joined)
	wg.Wait()
	t.Logf("8 streams done in %v; replica g0a killed at %v; third g1 replica ready %v after start", time.Since(start).Round(time.Millisecond), killedAt.Round(time.Millisecond), joinReady.Round(time.Millisecond))
	failed := 0
	for i, c := range cases {
		r := results[i]
		switch {
		case r.err != nil:
			failed++
			t.Errorf("stream %d (%s): %v", i, c.Mode, r.err)
		case !slices.Equal(r.ids, c.IDs[:min(len(c.IDs), c.GenLength)]) || r.forwards != c.Forwards: // a request returns the window's first gen_length
			failed++
			t.Errorf("stream %d (%s): output differs from the in-process engine's (%d vs %d forwards)", i, c.Mode, r.forwards, c.Forwards)
		}
	}
	t.Logf("failed streams: %d of %d", failed, len(cases))
	// the third replica took traffic: the calls it reports (expertd.compute spans exist only
	// for sampled traces, and attnd's expert streams carry none here)
	lctx, lcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer lcancel()
	l, err := reg.Instances(lctx, services.KindExpertd)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	joinedIDs := 0
	for _, in := range l {
		if before[in.ID] || !strings.Contains(in.ID, "g1") {
			continue
		}
		joinedIDs++
		load, err := instanceLoad(lctx, services.KindExpertd, in.Addr, services.ClientConfig{}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		n += load.GetCalls()
	}
	if joinedIDs != 1 {
		t.Fatalf("%d group-1 instances joined mid-run in Consul, want 1", joinedIDs)
	}
	if n == 0 {
		t.Error("the replica added mid-run served no expert call")
	}
	t.Logf("replica added mid-run served %d expert calls", n)

	// graceful stop under load: SIGTERM the replica that joined (it deregisters, then drains)
	// while 4 streams run; none may fail
	res2 := make([]error, 4)
	var wg2 sync.WaitGroup
	for i := range res2 {
		c := cases[i]
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, "generate", "--addr", gw.addr, "--mode", c.Mode, "--gen", fmt.Sprint(c.GenLength), "--json", c.Prompt).Output()
			if err != nil {
				res2[i] = fmt.Errorf("%v: %s", err, exitStderr(err))
				return
			}
			var got struct {
				IDs []int32 `json:"ids"`
			}
			if err := json.Unmarshal(out, &got); err != nil || !slices.Equal(got.IDs, c.IDs[:min(len(c.IDs), c.GenLength)]) {
				res2[i] = fmt.Errorf("output differs from the reference (%v)", err)
			}
		}()
	}
	time.Sleep(2 * time.Second)
	if err := g1c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wg2.Wait()
	for i, err := range res2 {
		if err != nil {
			t.Errorf("graceful stop: stream %d: %v", i, err)
		}
	}

	// kill every replica of group 1
	for _, p := range []*proc{g1a, g1b, g1c} {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = exec.CommandContext(ctx, bin, "generate", "--addr", gw.addr, "--gen", "16", "--json", "func main() {").Output()
	took := time.Since(t0)
	if err == nil {
		t.Fatal("generate succeeded with every replica of group 1 dead")
	}
	msg := exitStderr(err)
	if !strings.Contains(msg, "Unavailable") || !strings.Contains(msg, "8-15") {
		t.Errorf("want UNAVAILABLE naming experts 8-15, got: %s", msg)
	}
	t.Logf("with group 1 gone the stream failed after %v: %s", took.Round(time.Millisecond), strings.TrimSpace(msg))
}
