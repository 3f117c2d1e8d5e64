// Package testutil holds the small helpers the tests of several packages share.
//
// Who may import: tests only (it imports testing).
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
