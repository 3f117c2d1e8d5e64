package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
)

// DialFunc opens the connection of a new Pool member; Dial with a fixed ClientConfig is the usual
// one.
type DialFunc func(Instance) (*grpc.ClientConn, error)

// Pool holds the replicas of one kind or group (say, the expertd replicas of expert group 3) and
// picks one per call: the replica with the fewest outstanding calls, ties broken round-robin,
// skipping replicas whose breaker is open (and half-open ones already probing). Feed it the sets
// from Registry.Watch, filtered to the group, with Update. Safe for concurrent use.
type Pool struct {
	name          string
	cfg           BreakerConfig
	dial          DialFunc
	halfOpenCalls int

	lat    latencies    // answered Hedge calls (hedge.go)
	hedges atomic.Int64 // Hedge calls sent to a second replica

	mu       sync.Mutex
	hedge    HedgeConfig
	replicas []*Replica // sorted by instance ID
	filled   bool       // an Update has given the pool members before
	next     int        // rotation start for ties
	closed   bool
}

// Replica is one member of a Pool. Its outstanding count and removal are guarded by the pool.
type Replica struct {
	inst    atomic.Pointer[Instance] // replaced whole when discovery updates its tags or meta
	breaker *Breaker
	conn    *grpc.ClientConn

	outstanding int
	stuck       int // Hedge calls past their hedge delay and still running
	removed     bool
	gone        atomic.Bool // removed, readable without the pool's lock
}

// Removed reports whether the replica has left the pool (it left discovery, or the pool closed).
func (r *Replica) Removed() bool { return r.gone.Load() }

// Instance returns the replica's instance (a copy).
func (r *Replica) Instance() Instance { return r.inst.Load().clone() }

// Breaker returns the replica's circuit breaker.
func (r *Replica) Breaker() *Breaker { return r.breaker }

// Conn returns the replica's connection (nil when the pool has no DialFunc). It stays open while
// the call that picked the replica is outstanding, even if the replica leaves the pool.
func (r *Replica) Conn() *grpc.ClientConn { return r.conn }

// ReplicaStatus is a snapshot of one replica, for metrics and debugging.
type ReplicaStatus struct {
	Instance    Instance
	Outstanding int
	Stuck       bool // a call is past its hedge delay (Hedge); picked only when no other is usable
	Breaker     BreakerState
}

// NewPool makes an empty pool called name (used in errors and breaker names); dial may be nil
// when the caller keeps its own connections.
func NewPool(name string, cfg BreakerConfig, dial DialFunc) *Pool {
	cfg = cfg.WithDefaults()
	return &Pool{name: name, cfg: cfg, dial: dial, halfOpenCalls: int(cfg.HalfOpenCalls), hedge: HedgeConfig{}.WithDefaults()}
}

// Update makes the pool's members exactly instances (by ID). A kept member keeps its breaker,
// connection and outstanding count; one whose address changed is replaced. The connection of a
// removed member is closed once its last outstanding call is done. Dial errors are returned
// joined, and those instances are left out (the next Update tries again).
func (p *Pool) Update(instances []Instance) error {
	return p.replace(instances, false)
}

func (p *Pool) replace(instances []Instance, closing bool) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("services: pool %s is closed", p.name)
	}
	p.closed = closing
	old := make(map[string]*Replica, len(p.replicas))
	for _, r := range p.replicas {
		old[r.inst.Load().ID] = r
	}
	var (
		next    []*Replica
		toClose []*grpc.ClientConn
		errs    []error
		seen    = map[string]bool{}
		joined  []Instance
		left    []Instance
	)
	for _, in := range instances {
		if seen[in.ID] {
			continue
		}
		seen[in.ID] = true
		if r, ok := old[in.ID]; ok && r.inst.Load().Addr == in.Addr {
			c := in.clone()
			r.inst.Store(&c)
			next = append(next, r)
			delete(old, in.ID)
			continue
		}
		joined = append(joined, in)
		r := &Replica{breaker: NewBreaker(p.name+"/"+in.ID, p.cfg)}
		c := in.clone()
		r.inst.Store(&c)
		if p.dial != nil {
			cc, err := p.dial(in)
			if err != nil {
				errs = append(errs, fmt.Errorf("services: pool %s: dial %s at %s: %w", p.name, in.ID, in.Addr, err))
				continue
			}
			r.conn = cc
		}
		next = append(next, r)
	}
	for _, r := range old {
		left = append(left, r.inst.Load().clone())
		r.removed = true
		r.gone.Store(true)
		if r.outstanding == 0 && r.conn != nil {
			toClose = append(toClose, r.conn)
		}
	}
	slices.SortFunc(next, func(a, b *Replica) int { return strings.Compare(a.inst.Load().ID, b.inst.Load().ID) })
	p.replicas = next
	p.next = 0
	joinLevel := slog.LevelInfo
	if !p.filled { // the first members are the pool's start, not news
		joinLevel = slog.LevelDebug
	}
	p.filled = p.filled || len(next) > 0
	p.mu.Unlock()

	for _, cc := range toClose {
		_ = cc.Close() // a removed replica: nothing to report if its connection fails to close
	}
	if !closing {
		for _, in := range left {
			slog.Warn("replica left the pool", "pool", p.name, "instance", in.ID, "addr", in.Addr)
		}
		for _, in := range joined {
			slog.Log(context.Background(), joinLevel, "replica joined the pool", "pool", p.name, "instance", in.ID, "addr", in.Addr)
		}
	}
	return errors.Join(errs...)
}

// Pick reserves the replica with the fewest outstanding calls and returns it with done, which
// the caller must call (once; later calls do nothing) when its call has finished. A replica with a
// call stuck past its hedge delay (see Hedge) is picked only when no other is usable. With no
// usable replica it returns an error wrapping ErrNoReplica.
func (p *Pool) Pick() (r *Replica, done func(), err error) { return p.PickFunc(nil) }

// PickFunc is Pick passing over the replicas for which skip (nil: none) reports true.
func (p *Pool) PickFunc(skip func(*Replica) bool) (r *Replica, done func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.replicas)
	best := -1
	better := func(c, b *Replica) bool {
		if (c.stuck > 0) != (b.stuck > 0) {
			return c.stuck == 0
		}
		return c.outstanding < b.outstanding
	}
	for i := range n {
		c := p.replicas[(p.next+i)%n]
		if skip != nil && skip(c) {
			continue
		}
		switch c.breaker.State() {
		case BreakerOpen:
			continue
		case BreakerHalfOpen:
			if c.outstanding >= p.halfOpenCalls {
				continue
			}
		}
		if best < 0 || better(c, p.replicas[best]) {
			best = (p.next + i) % n
		}
	}
	if best < 0 {
		if skip != nil {
			return nil, nil, fmt.Errorf("services: pool %s (%d replicas): none usable but those passed over: %w", p.name, n, ErrNoReplica)
		}
		return nil, nil, fmt.Errorf("services: pool %s (%d replicas): %w", p.name, n, ErrNoReplica)
	}
	p.next = (p.next + 1) % n
	r = p.replicas[best]
	r.outstanding++
	var once sync.Once
	return r, func() { once.Do(func() { p.release(r) }) }, nil
}

func (p *Pool) release(r *Replica) {
	p.mu.Lock()
	r.outstanding--
	closeConn := r.removed && r.outstanding == 0 && r.conn != nil
	p.mu.Unlock()
	if closeConn {
		_ = r.conn.Close()
	}
}

// Do picks a replica and runs fn through its breaker. It makes one attempt: failover to another
// replica is the caller's policy (a failed call's error is returned unchanged).
func (p *Pool) Do(ctx context.Context, fn func(context.Context, *Replica) error) error {
	r, done, err := p.Pick()
	if err != nil {
		return err
	}
	defer done()
	return r.breaker.Do(ctx, func(ctx context.Context) error { return fn(ctx, r) })
}

// BreakerOpen returns the members whose breaker is open (Pick passes over them until their
// open timeout ends, or a Reset).
func (p *Pool) BreakerOpen() []*Replica {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*Replica
	for _, r := range p.replicas {
		if r.breaker.State() == BreakerOpen {
			out = append(out, r)
		}
	}
	return out
}

// Len returns the number of members, usable or not.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.replicas)
}

// Status returns a snapshot of the members, sorted by ID.
func (p *Pool) Status() []ReplicaStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]ReplicaStatus, len(p.replicas))
	for i, r := range p.replicas {
		out[i] = ReplicaStatus{Instance: r.inst.Load().clone(), Outstanding: r.outstanding, Stuck: r.stuck > 0, Breaker: r.breaker.State()}
	}
	return out
}

// Close removes every member (closing connections as their calls finish) and refuses further
// Updates; Pick then fails with ErrNoReplica.
func (p *Pool) Close() error {
	return p.replace(nil, true)
}
