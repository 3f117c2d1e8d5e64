package services

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/errdefs"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

func instances(n int) []Instance {
	out := make([]Instance, n)
	for i := range out {
		out[i] = Instance{ID: fmt.Sprintf("r%d", i), Kind: KindExpertd, Addr: fmt.Sprintf("127.0.0.1:%d", 9000+i)}
	}
	return out
}

func outstanding(p *Pool) map[string]int {
	m := map[string]int{}
	for _, s := range p.Status() {
		m[s.Instance.ID] = s.Outstanding
	}
	return m
}

// Concurrent picks that hold their replica spread evenly: least outstanding first.
func TestPoolLeastOutstandingConcurrent(t *testing.T) {
	p := NewPool("g0", BreakerConfig{}, nil)
	if err := p.Update(instances(3)); err != nil {
		t.Fatal(err)
	}
	const callers = 30
	var (
		wg   sync.WaitGroup
		held sync.WaitGroup
		hold = make(chan struct{})
	)
	for range callers {
		wg.Add(1)
		held.Add(1)
		go func() {
			defer wg.Done()
			_, done, err := p.Pick()
			if err != nil {
				t.Error(err)
				held.Done()
				return
			}
			held.Done()
			<-hold
			done()
			done() // a second call is harmless
		}()
	}
	held.Wait()
	for id, n := range outstanding(p) {
		if n != callers/3 {
			t.Errorf("%s holds %d calls, want %d: %v", id, n, callers/3, outstanding(p))
		}
	}
	close(hold)
	wg.Wait()
	for id, n := range outstanding(p) {
		if n != 0 {
			t.Errorf("%s has %d outstanding after every call ended", id, n)
		}
	}
}

func TestPoolPicksLeastAndRotatesTies(t *testing.T) {
	p := NewPool("g0", BreakerConfig{}, nil)
	_ = p.Update(instances(3))
	// Hold two calls on whichever replicas come first, then the third must be the idle one.
	r1, d1, _ := p.Pick()
	r2, d2, _ := p.Pick()
	r3, d3, _ := p.Pick()
	if r1 == r2 || r2 == r3 || r1 == r3 {
		t.Fatalf("three picks on an idle pool hit %s, %s, %s", r1.inst.Load().ID, r2.inst.Load().ID, r3.inst.Load().ID)
	}
	d1()
	r4, d4, _ := p.Pick()
	if r4 != r1 {
		t.Errorf("picked %s, want the only idle replica %s", r4.inst.Load().ID, r1.inst.Load().ID)
	}
	d2()
	d3()
	d4()

	// Sequential calls on an idle pool rotate.
	count := map[string]int{}
	for range 9 {
		r, done, err := p.Pick()
		if err != nil {
			t.Fatal(err)
		}
		count[r.inst.Load().ID]++
		done()
	}
	for id, n := range count {
		if n != 3 {
			t.Errorf("sequential picks %v: %s got %d, want 3", count, id, n)
		}
	}
}

func TestPoolSkipsOpenBreakers(t *testing.T) {
	p := NewPool("g1", BreakerConfig{Failures: 1, OpenTimeout: time.Hour}, nil)
	_ = p.Update(instances(2))
	down := status.Error(codes.Unavailable, "down")
	// Fail once on r0 (whichever Do picks first is r0 on a fresh pool).
	err := p.Do(t.Context(), func(_ context.Context, r *Replica) error {
		if r.Instance().ID != "r0" {
			t.Fatalf("first pick %s, want r0", r.Instance().ID)
		}
		return down
	})
	if err != down {
		t.Fatalf("Do = %v, want fn's error", err)
	}
	for range 5 {
		_ = p.Do(t.Context(), func(_ context.Context, r *Replica) error {
			if r.Instance().ID == "r0" {
				t.Error("picked r0 behind an open breaker")
			}
			return nil
		})
	}
	// All open: ErrNoReplica, which maps to Unavailable.
	_ = p.Do(t.Context(), func(context.Context, *Replica) error { return down })
	err = p.Do(t.Context(), func(context.Context, *Replica) error { return nil })
	if !errors.Is(err, ErrNoReplica) || CodeOf(err) != codes.Unavailable {
		t.Errorf("all breakers open: %v, want ErrNoReplica", err)
	}
	// Update keeps breaker state of kept members.
	_ = p.Update(instances(2))
	if st := p.Status(); st[0].Breaker != BreakerOpen || st[1].Breaker != BreakerOpen {
		t.Errorf("Update reset breakers: %+v", st)
	}
}

func TestPoolEmpty(t *testing.T) {
	p := NewPool("g2", BreakerConfig{}, nil)
	if _, _, err := p.Pick(); !errors.Is(err, ErrNoReplica) {
		t.Errorf("empty pool: %v", err)
	}
}

// Removed replicas keep their connection until their last call ends.
func TestPoolUpdateClosesRemoved(t *testing.T) {
	dial := func(in Instance) (*grpc.ClientConn, error) { return Dial("passthrough:///"+in.Addr, ClientConfig{}) }
	p := NewPool("g3", BreakerConfig{}, dial)
	if err := p.Update(instances(2)); err != nil {
		t.Fatal(err)
	}
	r, done, _ := p.Pick()
	other := p.replicas[1]
	if other == r {
		other = p.replicas[0]
	}
	if err := p.Update(nil); err != nil {
		t.Fatal(err)
	}
	if other.conn.GetState() != connectivity.Shutdown {
		t.Error("idle removed replica's connection still open")
	}
	if r.conn.GetState() == connectivity.Shutdown {
		t.Error("connection closed under an outstanding call")
	}
	done()
	if r.conn.GetState() != connectivity.Shutdown {
		t.Error("removed replica's connection not closed after its last call")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Update(instances(1)); err == nil {
		t.Error("Update after Close succeeded")
	}
}

// A pool of fake Experts replicas over bufconn, fed by a registry watch: a replica that answers
// Unavailable is taken out by its breaker and the calls go to the healthy one.
func TestPoolOverGRPC(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	servers := map[string]*testServer{
		"bad":  startServer(t, ServerConfig{}, func(s *Server) { pb.RegisterExpertsServer(s, &fakeExperts{err: errdefs.ErrOverloaded}) }),
		"good": startServer(t, ServerConfig{}, func(s *Server) { pb.RegisterExpertsServer(s, &fakeExperts{}) }),
	}
	dial := func(in Instance) (*grpc.ClientConn, error) {
		ts := servers[in.Addr]
		return Dial("passthrough:///"+in.Addr, ClientConfig{}, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return ts.lis.DialContext(ctx)
		}))
	}
	p := NewPool("experts-g0", BreakerConfig{Failures: 2, OpenTimeout: time.Hour}, dial)
	defer p.Close()

	reg := NewMemRegistry()
	ch, err := reg.Watch(ctx, KindExpertd)
	if err != nil {
		t.Fatal(err)
	}
	_ = reg.Register(ctx, Instance{ID: "e-bad", Kind: KindExpertd, Addr: "bad"})
	_ = reg.Register(ctx, Instance{ID: "e-good", Kind: KindExpertd, Addr: "good"})
	for p.Len() < 2 {
		if err := p.Update(recvSet(t, ch)); err != nil {
			t.Fatal(err)
		}
	}

	var failures int
	for range 10 {
		err := p.Do(ctx, func(ctx context.Context, r *Replica) error {
			_, err := pb.NewExpertsClient(r.Conn()).Compute(ctx, &pb.ExpertsRequest{X: []byte{1}})
			return err
		})
		if err != nil {
			failures++
			if status.Code(err) != codes.ResourceExhausted {
				t.Errorf("call error %v", err)
			}
		}
	}
	if failures != 2 {
		t.Errorf("%d failed calls, want 2 before the breaker opened", failures)
	}
	st := p.Status()
	if st[0].Instance.ID != "e-bad" || st[0].Breaker != BreakerOpen || st[1].Breaker != BreakerClosed {
		t.Errorf("pool status %+v", st)
	}
}

// TestReplicaInstanceDuringUpdate: discovery updating a member's tags while calls read its
// instance is no data race (go test -race).
func TestReplicaInstanceDuringUpdate(t *testing.T) {
	p := NewPool("experts", BreakerConfig{}, nil)
	t.Cleanup(func() { p.Close() })
	in := func(i int) []Instance {
		return []Instance{{ID: "e0", Kind: KindExpertd, Addr: "127.0.0.1:1", Tags: []string{fmt.Sprint("v", i)}}}
	}
	if err := p.Update(in(0)); err != nil {
		t.Fatal(err)
	}
	r, done, err := p.Pick()
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	stop := make(chan struct{})
	go func() {
		defer close(stop)
		for i := range 200 {
			_ = p.Update(in(i))
		}
	}()
	for {
		select {
		case <-stop:
			if got := r.Instance().Tags; len(got) != 1 || got[0] != "v199" {
				t.Fatalf("tags %v after the updates, want [v199]", got)
			}
			return
		default:
			_ = r.Instance().ID
		}
	}
}
