package testutil

import (
	"testing"
	"time"
)

func TestWaitFor(t *testing.T) {
	n := 0
	if d := WaitFor(t, "third poll", time.Second, func() bool { n++; return n == 3 }); n != 3 || d < 2*PollInterval {
		t.Fatalf("WaitFor returned after %d polls, %v; want 3 polls, at least %v", n, d, 2*PollInterval)
	}
}
