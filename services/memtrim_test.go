package services

import (
	"context"
	"net"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
)

func TestIdleTrimmerFreesOncePerQuietPeriod(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	var frees, released int
	tr := &idleTrimmer{free: func() { frees++ }, now: clk.now}
	tr.afterNs.Store(int64(5 * time.Second))
	unregister := tr.onTrim(func() {
		if released != frees {
			t.Error("a release hook ran after the memory was freed")
		}
		released++
	})

	if tr.trimNow() {
		t.Fatal("trimmed before any activity")
	}
	tr.touch()
	clk.add(4 * time.Second)
	if tr.trimNow() {
		t.Fatal("trimmed 4 s after activity with a 5 s quiet period")
	}
	clk.add(2 * time.Second)
	if !tr.trimNow() || frees != 1 {
		t.Fatalf("not trimmed 6 s after the last activity (frees %d)", frees)
	}
	if released != 1 {
		t.Fatalf("release hook ran %d times at the first trim", released)
	}
	clk.add(time.Minute)
	if tr.trimNow() || frees != 1 {
		t.Fatalf("trimmed again without new activity (frees %d)", frees)
	}
	unregister()
	tr.touch()
	clk.add(3 * time.Second)
	tr.touch() // the quiet period restarts at the last message
	clk.add(3 * time.Second)
	if tr.trimNow() {
		t.Fatal("trimmed 3 s after the last message")
	}
	clk.add(3 * time.Second)
	if !tr.trimNow() || frees != 2 {
		t.Fatalf("not trimmed after the second quiet period (frees %d)", frees)
	}
	if released != 1 {
		t.Fatalf("an unregistered release hook ran (%d)", released)
	}
}

func TestIdleTrimmerDisabled(t *testing.T) {
	var frees int
	tr := &idleTrimmer{free: func() { frees++ }, now: time.Now}
	tr.start(-1)
	tr.touch()
	if tr.trimNow() || frees != 0 {
		t.Fatal("a trimmer never started with a positive period trimmed")
	}
}

// trimNow ticks the trimmer and reports whether it trimmed.
func (t *idleTrimmer) trimNow() bool {
	before := t.trims
	t.tick()
	return t.trims > before
}

// TestIdleTrimmerTimer: with a real clock the first message arms a timer that trims once the
// traffic has been quiet for the period, and nothing runs while idle.
func TestIdleTrimmerTimer(t *testing.T) {
	freed := make(chan struct{}, 4)
	tr := &idleTrimmer{free: func() { freed <- struct{}{} }, now: time.Now}
	tr.start(20 * time.Millisecond)
	tr.start(time.Hour) // the shortest period asked for wins
	for range 5 {
		tr.touch()
		time.Sleep(2 * time.Millisecond)
	}
	select {
	case <-freed:
	case <-time.After(10 * time.Second):
		t.Fatal("no trim after the traffic stopped")
	}
	select {
	case <-freed:
		t.Fatal("trimmed twice for one burst")
	case <-time.After(100 * time.Millisecond):
	}
	tr.touch()
	select {
	case <-freed:
	case <-time.After(10 * time.Second):
		t.Fatal("no trim after a second burst")
	}
}

// TestTrimStatsIgnoresHealth: health calls (Consul's checks, probes) are not work; any other
// call's messages are.
func TestTrimStatsIgnoresHealth(t *testing.T) {
	tr := &idleTrimmer{free: func() {}, now: time.Now}
	h := trimStats{tr}
	ctx := context.Background()
	hctx := h.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: "/grpc.health.v1.Health/Check"})
	h.HandleRPC(hctx, &stats.InPayload{})
	h.HandleRPC(hctx, &stats.OutPayload{})
	if n := tr.activity.Load(); n != 0 {
		t.Fatalf("health messages counted as activity: %d", n)
	}
	wctx := h.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: "/dlmesh.v1.Experts/Compute"})
	h.HandleRPC(wctx, &stats.Begin{})
	h.HandleRPC(wctx, &stats.InPayload{})
	h.HandleRPC(wctx, &stats.OutPayload{})
	if n := tr.activity.Load(); n != 2 {
		t.Fatalf("a Compute call's two messages counted as %d", n)
	}
}

// TestServerReportsTrafficToTrimmer: a real server's calls reach the process trimmer through its
// stats handler, its health checks do not.
func TestServerReportsTrafficToTrimmer(t *testing.T) {
	srv := NewServer(ServerConfig{IdleTrim: -1})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	conn, err := Dial(lis.Addr().String(), ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	before := procTrim.activity.Load()
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: LivenessService}); err != nil {
		t.Fatal(err)
	}
	if d := procTrim.activity.Load() - before; d != 0 {
		t.Fatalf("a health check counted %d messages of activity", d)
	}
	// any other method is work, even one the server does not have (the client's message counts)
	_ = conn.Invoke(context.Background(), "/dlmesh.v1.Experts/Compute", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
	if procTrim.activity.Load() == before {
		t.Fatal("a Compute call did not count as activity")
	}
}
