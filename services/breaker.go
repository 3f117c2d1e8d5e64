package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc/codes"
)

// Breaker is the circuit breaker of one instance (one replica's address). Calls whose error says
// the instance is unwell (Unavailable, DeadlineExceeded, ResourceExhausted, Internal, Unknown,
// Aborted, DataLoss, Unimplemented) count as failures; after BreakerConfig.Failures consecutive
// ones it opens and rejects calls with ErrBreakerOpen for OpenTimeout, then lets HalfOpenCalls
// probes through. A cancelled call counts as nothing, and an error that is the caller's fault
// (InvalidArgument, NotFound, FailedPrecondition, …) counts as a success: the instance answered.
// Safe for concurrent use.
type Breaker struct {
	name     string
	settings gobreaker.Settings
	cb       atomic.Pointer[gobreaker.CircuitBreaker[struct{}]]
}

// BreakerState is the state of a Breaker.
type BreakerState int

// States of a Breaker.
const (
	BreakerClosed BreakerState = iota
	BreakerHalfOpen
	BreakerOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return fmt.Sprintf("BreakerState(%d)", int(s))
}

// NewBreaker makes a closed breaker for the instance called name (zero cfg fields take the
// defaults).
func NewBreaker(name string, cfg BreakerConfig) *Breaker {
	cfg = cfg.WithDefaults()
	failures := cfg.Failures
	b := &Breaker{
		name: name,
		settings: gobreaker.Settings{
			Name:        name,
			MaxRequests: cfg.HalfOpenCalls,
			Interval:    cfg.Interval,
			Timeout:     cfg.OpenTimeout,
			ReadyToTrip: func(c gobreaker.Counts) bool {
				return c.ConsecutiveFailures >= failures
			},
			IsSuccessful: func(err error) bool { return !IsInstanceFailure(err) },
			IsExcluded: func(err error) bool {
				return CodeOf(err) == codes.Canceled
			},
			OnStateChange: func(name string, from, to gobreaker.State) {
				lvl := slog.LevelInfo
				if to == gobreaker.StateOpen {
					lvl = slog.LevelWarn
				}
				slog.Log(context.Background(), lvl, "breaker "+to.String(), "instance", name, "from", from.String(), "to", to.String())
			},
		},
	}
	b.cb.Store(gobreaker.NewCircuitBreaker[struct{}](b.settings))
	return b
}

// Reset closes the breaker at once, with fresh counts: the caller has evidence the instance is
// well again (its health check answers SERVING) and need not wait for OpenTimeout. Calls in
// flight finish on the old state.
func (b *Breaker) Reset() {
	if b.cb.Load().State() == gobreaker.StateClosed {
		return
	}
	b.cb.Store(gobreaker.NewCircuitBreaker[struct{}](b.settings))
	slog.Info("breaker reset: the instance answers its health check", "instance", b.name)
}

// Name returns the instance name the breaker was made for.
func (b *Breaker) Name() string { return b.name }

// State returns the breaker's current state (an open breaker past its timeout reads half-open).
func (b *Breaker) State() BreakerState {
	switch b.cb.Load().State() {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
}

// Do runs fn unless the breaker is open, and records its outcome. A rejected call returns an
// error wrapping ErrBreakerOpen and naming the instance; fn's error is returned unchanged. If
// ctx has already ended, Do returns ctx.Err() without calling fn or counting anything.
func (b *Breaker) Do(ctx context.Context, fn func(context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := b.cb.Load().Execute(func() (struct{}, error) {
		return struct{}{}, fn(ctx)
	})
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return fmt.Errorf("services: instance %s: %w", b.name, ErrBreakerOpen)
	}
	return err
}

// IsInstanceFailure reports whether err says the instance that returned it is unwell (and a
// breaker should count it), as opposed to success, cancellation or a bad request.
func IsInstanceFailure(err error) bool {
	switch CodeOf(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Internal,
		codes.Unknown, codes.Aborted, codes.DataLoss, codes.Unimplemented:
		return true
	}
	return false
}
