package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"testing"
	"time"
)

// TestSoakAgainstProcesses runs a short soak: the mesh as four processes, two streams for two
// seconds; every request completes and every process reports its memory.
func TestSoakAgainstProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts four processes; skipped with -short")
	}
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "soak", "--bin", bin, "--streams", "2", "--duration", "2s", "--settle", "0s", "--gen", "8", "--json").Output()
	if err != nil {
		t.Fatalf("soak: %v (%s)", err, exitStderr(err))
	}
	var rep soakReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("soak --json: %v\n%s", err, out)
	}
	if rep.Completed < 2 || len(rep.Failed) != 0 {
		t.Errorf("%d completed, failed %v (%v)", rep.Completed, rep.Failed, rep.FirstErrors)
	}
	if rep.AttndSessions != 0 || rep.AttndKVTokens != 0 {
		t.Errorf("after the load attnd holds %d sessions, %d KV positions", rep.AttndSessions, rep.AttndKVTokens)
	}
	if len(rep.Processes) != 4 {
		t.Fatalf("%d processes, want 4", len(rep.Processes))
	}
	for _, p := range rep.Processes {
		if p.RSSStartKiB <= 0 || p.RSSEndKiB <= 0 || p.RSSPeakKiB < p.RSSEndKiB {
			t.Errorf("%s: rss start %d, peak %d, end %d KiB", p.Name, p.RSSStartKiB, p.RSSPeakKiB, p.RSSEndKiB)
		}
	}
	if rep.P99Ms < rep.P50Ms || rep.FirstP50Ms <= 0 || rep.FirstP50Ms > rep.P50Ms {
		t.Errorf("latency p50 %v p99 %v, first event p50 %v", rep.P50Ms, rep.P99Ms, rep.FirstP50Ms)
	}
}

func TestQuantile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3}
	for _, c := range []struct{ q, want float64 }{{0.5, 3}, {0.99, 5}, {0, 1}} {
		if got := quantile(v, c.q); got != c.want {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if quantile(nil, 0.5) != 0 {
		t.Error("quantile of nothing")
	}
}
