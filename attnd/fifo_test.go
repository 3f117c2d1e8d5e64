package attnd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// waitWaiters spins until l has n waiters (or fails after a minute: a hang, not a speed test).
func waitWaiters(tb testing.TB, l *fifoMutex, n int) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for l.waiting() != n {
		if time.Now().After(deadline) {
			tb.Fatalf("%d waiters, want %d", l.waiting(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFIFOMutexOrder: the lock goes to the waiters in arrival order, and a holder that unlocks
// and locks again at once gets it only after every goroutine that was waiting (what a
// sync.Mutex does not do: its unlocker usually barges ahead of the waiter it woke).
func TestFIFOMutexOrder(t *testing.T) {
	var l fifoMutex
	ctx := context.Background()
	for iter := range 50 {
		if err := l.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var order []string
		got := func(who string) {
			mu.Lock()
			order = append(order, who)
			mu.Unlock()
		}
		var wg sync.WaitGroup
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := l.Lock(ctx); err != nil {
					t.Error(err)
					return
				}
				got(fmt.Sprint("w", w))
				l.Unlock()
			}()
			waitWaiters(t, &l, w+1) // w arrived before w+1
		}
		l.Unlock()
		if err := l.Lock(ctx); err != nil { // the holder again, at once
			t.Fatal(err)
		}
		got("holder")
		l.Unlock()
		wg.Wait()
		if want := []string{"w0", "w1", "w2", "holder"}; !slices.Equal(order, want) {
			t.Fatalf("iteration %d: lock order %v, want %v", iter, order, want)
		}
	}
}

// TestFIFOMutexCancel: a waiter whose context ends leaves without the lock and without
// blocking the others, also when the lock is handed to it as its context ends.
func TestFIFOMutexCancel(t *testing.T) {
	var l fifoMutex
	bg := context.Background()
	if err := l.Lock(bg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	errc := make(chan error, 1)
	go func() { errc <- l.Lock(ctx) }()
	waitWaiters(t, &l, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("lock with a cancelled context: %v, want context.Canceled", err)
	}
	if n := l.waiting(); n != 0 {
		t.Fatalf("%d waiters after the cancelled one left", n)
	}
	if err := l.Lock(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("lock with a context already cancelled: %v", err)
	}
	l.Unlock()

	// The cancel races with the hand-over: whichever wins, the lock ends free.
	for iter := range 200 {
		if err := l.Lock(bg); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(bg)
		go func() { errc <- l.Lock(ctx) }()
		waitWaiters(t, &l, 1)
		go cancel()
		l.Unlock()
		if err := <-errc; err == nil {
			l.Unlock()
		} else if !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		cancel()
		tctx, tcancel := context.WithTimeout(bg, time.Minute)
		if err := l.Lock(tctx); err != nil {
			t.Fatalf("iteration %d: the lock is not free after a cancelled waiter: %v", iter, err)
		}
		tcancel()
		l.Unlock()
	}
	defer func() {
		if recover() == nil {
			t.Error("unlock of an unlocked fifoMutex did not panic")
		}
	}()
	l.Unlock()
}
