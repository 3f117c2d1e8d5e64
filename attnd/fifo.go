package attnd

import (
	"context"
	"slices"
	"sync"
)

// fifoMutex is a mutual exclusion lock granted in arrival order: Unlock hands the lock straight
// to the longest waiter, so a holder that unlocks and locks again queues behind everyone who
// was waiting. (sync.Mutex does not promise that: an unlocking goroutine that locks again at
// once usually wins against the waiter it woke, until that waiter has starved for 1 ms.) A
// chunked step relies on it to let the other steps in between its rounds. The zero value is
// unlocked.
type fifoMutex struct {
	mu      sync.Mutex
	held    bool
	waiters []chan struct{} // closed when the lock is handed to it; held stays true
}

// Lock takes the lock, or returns ctx's error (without the lock) if ctx ends first.
func (l *fifoMutex) Lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	if !l.held { // then nobody waits: Unlock hands over while there are waiters
		l.held = true
		l.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.waiters, ch); i >= 0 {
		l.waiters = slices.Delete(l.waiters, i, i+1)
		return ctx.Err()
	}
	l.unlock() // handed to us as ctx ended: pass it on
	return ctx.Err()
}

// Unlock releases the lock, to the longest waiter if any. It panics if the lock is not held.
func (l *fifoMutex) Unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unlock()
}

// unlock is Unlock with l.mu held.
func (l *fifoMutex) unlock() {
	if !l.held {
		panic("attnd: unlock of an unlocked fifoMutex")
	}
	if len(l.waiters) == 0 {
		l.held = false
		return
	}
	next := l.waiters[0]
	l.waiters = slices.Delete(l.waiters, 0, 1)
	close(next)
}

// waiting is the number of goroutines waiting in Lock.
func (l *fifoMutex) waiting() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.waiters)
}
