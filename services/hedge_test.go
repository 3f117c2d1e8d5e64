package services

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeReplicas answers Hedge calls: a replica in hung blocks until its call's context ends, the
// others answer after delay.
type fakeReplicas struct {
	delay time.Duration
	mu    sync.Mutex
	hung  map[string]bool
	calls map[string]int
}

func (f *fakeReplicas) setHung(id string, hung bool) {
	f.mu.Lock()
	f.hung[id] = hung
	f.mu.Unlock()
}

func (f *fakeReplicas) call(ctx context.Context, r *Replica) (string, error) {
	f.mu.Lock()
	id := r.Instance().ID
	f.calls[id]++
	hung := f.hung[id]
	f.mu.Unlock()
	if hung {
		<-ctx.Done()
		return "", status.Error(codes.DeadlineExceeded, ctx.Err().Error())
	}
	select {
	case <-time.After(f.delay):
		return id, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// TestHedgeHungReplica: with one of two replicas hung, a call that picks it costs one hedge delay
// (answered by the other replica), the hung replica is then passed over while its call is stuck,
// comes back once that call ends (and is passed over again at once if still hung), and a
// recovered replica serves again without hedges.
func TestHedgeHungReplica(t *testing.T) {
	p := NewPool("g", BreakerConfig{Failures: 1000}, nil)
	if err := p.Update(instances(2)); err != nil {
		t.Fatal(err)
	}
	const floor = 30 * time.Millisecond
	p.SetHedge(HedgeConfig{Floor: floor, MinSamples: 4})
	f := &fakeReplicas{delay: time.Millisecond, hung: map[string]bool{}, calls: map[string]int{}}
	ctx := context.Background()
	const timeout = 1500 * time.Millisecond
	for range 8 { // latencies: the delay drops to the floor
		if _, err := Hedge(ctx, p, timeout, f.call); err != nil {
			t.Fatal(err)
		}
	}
	delay := p.HedgeDelay() // the floor, or 4 × p99 on a loaded machine
	if delay < floor || delay >= timeout/4 {
		t.Fatalf("hedge delay %v after fast calls, want at least the floor %v and well under the timeout %v", delay, floor, timeout)
	}
	f.setHung("r0", true)
	var worst time.Duration
	t0 := time.Now()
	const calls = 40
	for range calls {
		c0 := time.Now()
		got, err := Hedge(ctx, p, timeout, f.call)
		if err != nil || got != "r1" {
			t.Fatalf("call with r0 hung: %q, %v; want r1's answer", got, err)
		}
		worst = max(worst, time.Since(c0))
	}
	elapsed := time.Since(t0)
	if worst > delay+timeout/4 {
		t.Errorf("worst call %v with a replica hung, want about one hedge delay (%v), far below the timeout %v", worst, delay, timeout)
	}
	// every stuck call lasts `timeout`; the hung replica is tried again only after one ends
	if max := int64(elapsed/timeout) + 1; p.Hedges() < 1 || p.Hedges() > max {
		t.Errorf("%d hedges over %v with calls stuck for %v, want 1 to %d", p.Hedges(), elapsed, timeout, max)
	}
	t.Logf("r0 hung: %d calls in %v, worst %v, %d hedges (delay %v)", calls, elapsed, worst, p.Hedges(), p.HedgeDelay())
	// the stuck call ends (timeout): r0 is probed again
	time.Sleep(timeout + 50*time.Millisecond)
	if st := p.Status(); st[0].Stuck {
		t.Errorf("r0 still stuck after its call's deadline: %+v", st[0])
	}
	f.setHung("r0", false)
	f.mu.Lock()
	before := f.calls["r0"]
	f.mu.Unlock()
	hedges := p.Hedges()
	for range 10 {
		if _, err := Hedge(ctx, p, timeout, f.call); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	after := f.calls["r0"]
	f.mu.Unlock()
	if after == before || p.Hedges() != hedges {
		t.Errorf("recovered r0 got %d of 10 calls with %d new hedges, want some calls and no hedge", after-before, p.Hedges()-hedges)
	}
}

// TestHedgeFailures: a replica that fails fast is retried on the other at once; an error that is
// the caller's fault is returned without a retry; with every replica failing the errors name them.
func TestHedgeFailures(t *testing.T) {
	p := NewPool("g", BreakerConfig{Failures: 1000}, nil)
	if err := p.Update(instances(2)); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	down := func(ctx context.Context, r *Replica) (string, error) {
		calls.Add(1)
		if r.Instance().ID == "r0" {
			return "", status.Error(codes.Unavailable, "connection refused")
		}
		return "r1", nil
	}
	for range 4 {
		if got, err := Hedge(context.Background(), p, time.Second, down); err != nil || got != "r1" {
			t.Fatalf("%q, %v: want r1's answer", got, err)
		}
	}
	calls.Store(0)
	bad := errors.New("bad request")
	_, err := Hedge(context.Background(), p, time.Second, func(context.Context, *Replica) (string, error) {
		calls.Add(1)
		return "", status.Error(codes.InvalidArgument, bad.Error())
	})
	if status.Code(err) != codes.InvalidArgument || calls.Load() != 1 {
		t.Errorf("caller's fault: %v after %d calls, want InvalidArgument after 1", err, calls.Load())
	}
	_, err = Hedge(context.Background(), p, time.Second, func(context.Context, *Replica) (string, error) {
		return "", status.Error(codes.Unavailable, "gone")
	})
	if msg := err.Error(); !strings.Contains(msg, "replica r0") || !strings.Contains(msg, "replica r1") {
		t.Errorf("every replica down: %v, want both named", err)
	}
}
