// Package testutil holds the small helpers the tests and benchmarks of several packages share:
// WaitFor, and ExpertEcho, the loopback gRPC floor of an expert hop.
//
// Who may import: tests only (it imports testing). It imports services and proto, so the
// services package's own internal tests cannot use it (its external tests can).
package testutil

import (
	"testing"
	"time"
)

// PollInterval is how often WaitFor checks its condition.
const PollInterval = 20 * time.Millisecond

// WaitFor polls cond every PollInterval until it holds and returns how long that took; when it
// does not hold within d the test fails, naming what it waited for.
func WaitFor(tb testing.TB, what string, d time.Duration, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			tb.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(PollInterval)
	}
	return time.Since(start)
}
