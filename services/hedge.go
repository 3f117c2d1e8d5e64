package services

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Defaults of HedgeConfig.
const (
	DefaultHedgeFloor      = 20 * time.Millisecond
	DefaultHedgeMultiplier = 4
	DefaultHedgeInitial    = time.Second // before MinSamples calls were timed
	DefaultHedgeMinSamples = 16
	hedgeWindow            = 256 // latencies kept per pool
)

// HedgeConfig sets when Hedge sends a call that has not answered to a second replica: after
// max(Floor, Multiplier × the p99 of the pool's last 256 answered calls), or after Initial while
// fewer than MinSamples calls have been timed. Zero fields take the defaults.
type HedgeConfig struct {
	Floor      time.Duration
	Multiplier float64
	Initial    time.Duration
	MinSamples int
}

// WithDefaults returns c with every zero field set to its default.
func (c HedgeConfig) WithDefaults() HedgeConfig {
	if c.Floor <= 0 {
		c.Floor = DefaultHedgeFloor
	}
	if c.Multiplier <= 0 {
		c.Multiplier = DefaultHedgeMultiplier
	}
	if c.Initial <= 0 {
		c.Initial = DefaultHedgeInitial
	}
	if c.MinSamples <= 0 {
		c.MinSamples = DefaultHedgeMinSamples
	}
	return c
}

// latencies is a ring of the last answered calls' durations.
type latencies struct {
	mu   sync.Mutex
	ring [hedgeWindow]time.Duration
	n    int // calls recorded, ever
}

func (l *latencies) observe(d time.Duration) {
	l.mu.Lock()
	l.ring[l.n%hedgeWindow] = d
	l.n++
	l.mu.Unlock()
}

// p99 returns the 99th percentile of the recorded durations and how many there are.
func (l *latencies) p99() (time.Duration, int) {
	l.mu.Lock()
	n := min(l.n, hedgeWindow)
	s := slices.Clone(l.ring[:n])
	l.mu.Unlock()
	if n == 0 {
		return 0, 0
	}
	slices.Sort(s)
	return s[min(n-1, n*99/100)], n
}

// SetHedge sets the pool's hedging policy (HedgeConfig defaults until called).
func (p *Pool) SetHedge(c HedgeConfig) {
	p.mu.Lock()
	p.hedge = c.WithDefaults()
	p.mu.Unlock()
}

// HedgeDelay is how long Hedge waits for a replica's answer before asking another.
func (p *Pool) HedgeDelay() time.Duration {
	p.mu.Lock()
	c := p.hedge
	p.mu.Unlock()
	p99, n := p.lat.p99()
	if n < c.MinSamples {
		return c.Initial
	}
	return max(c.Floor, time.Duration(c.Multiplier*float64(p99)))
}

// ObserveLatency records the duration of a call answered outside Hedge (attnd's streams), for
// the p99 behind HedgeDelay.
func (p *Pool) ObserveLatency(d time.Duration) { p.lat.observe(d) }

// Hedges is the number of calls Hedge sent to a second replica because the first was slow.
func (p *Pool) Hedges() int64 { return p.hedges.Load() }

func (p *Pool) setStuck(r *Replica, delta int) {
	p.mu.Lock()
	r.stuck += delta
	p.mu.Unlock()
}

// Hedge calls fn on a replica of p (Pick's choice) through its breaker with the deadline
// timeout. When that replica fails (an instance failure, or its breaker is open) or has not
// answered within p.HedgeDelay(), fn runs once more on another replica, and the first answer
// wins; an error that is the caller's fault (the replica answered: InvalidArgument, …) is
// returned at once. A replica whose call outlives the hedge delay is stuck: Pick passes over it
// while another replica is usable, until that call ends. The slow call is not cancelled when the
// hedge wins: it runs on to its own deadline as the probe that brings the replica back (its
// outcome feeds the breaker and the latencies); when the caller's ctx ends first, every attempt
// is cancelled. A hung replica thus costs one hedge delay per call that picks it, and calls
// pick it again only once its stuck call has ended. fn must be safe to run twice (idempotent).
func Hedge[T any](ctx context.Context, p *Pool, timeout time.Duration, fn func(context.Context, *Replica) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
		r   *Replica
	}
	var zero T
	results := make(chan result, 2)
	var detach []func() bool // per attempt: stop following ctx (the attempt runs on as a probe)
	launch := func(r *Replica, done func()) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		detach = append(detach, context.AfterFunc(ctx, cancel))
		go func() {
			defer cancel()
			defer done()
			t0 := time.Now()
			var v T
			err := r.breaker.Do(cctx, func(ctx context.Context) error {
				var err error
				v, err = fn(ctx, r)
				return err
			})
			if err == nil {
				p.lat.observe(time.Since(t0))
			}
			results <- result{v, err, r}
		}()
	}
	first, done, err := p.Pick()
	if err != nil {
		return zero, err
	}
	launch(first, done)
	pending, hedged := 1, false
	timer := time.NewTimer(p.HedgeDelay())
	defer timer.Stop()
	var stuck *Replica
	defer func() {
		for _, d := range detach {
			d() // the attempts still running finish on their own deadline
		}
		if stuck != nil {
			// unmark once the stuck attempt ends: it still sends to results (buffered)
			go func(r *Replica, left int) {
				for range left {
					<-results
				}
				p.setStuck(r, -1)
			}(stuck, pending)
		}
	}()
	second := func() bool {
		if hedged {
			return false
		}
		r, done, err := p.PickFunc(func(r *Replica) bool { return r == first })
		if err != nil {
			return false
		}
		hedged = true
		pending++
		launch(r, done)
		return true
	}
	var lastErr error
	for pending > 0 {
		select {
		case res := <-results:
			pending--
			if res.r == stuck && stuck != nil {
				p.setStuck(stuck, -1)
				stuck = nil
			}
			if res.err == nil {
				return res.v, nil
			}
			if ctx.Err() != nil {
				return zero, ctx.Err()
			}
			if !IsInstanceFailure(res.err) && !errors.Is(res.err, ErrBreakerOpen) {
				return zero, res.err // the replica answered: another gives the same answer
			}
			err := fmt.Errorf("replica %s: %w", res.r.inst.Load().ID, res.err)
			if lastErr != nil {
				err = fmt.Errorf("%w; %w", lastErr, err)
			}
			lastErr = err
			if pending == 0 && !second() {
				return zero, lastErr
			}
		case <-timer.C:
			if pending == 1 && !hedged {
				stuck = first
				p.setStuck(first, 1)
				if second() {
					p.hedges.Add(1)
				}
			}
		case <-ctx.Done():
			return zero, ctx.Err()
		}
	}
	return zero, lastErr
}
