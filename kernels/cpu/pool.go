package cpu

import (
	"sync"
	"sync/atomic"
)

// parallel runs fn for tasks 0..n-1 on up to b.workers goroutines (the caller's included),
// handing tasks out dynamically so that a busy core does not hold the others back. Each
// goroutine gets its own scratch buffer of scratchLen float32s (contents undefined).
func (b *Backend) parallel(n, scratchLen int, fn func(task int, scratch []float32)) {
	if n <= 0 {
		return
	}
	w := min(b.workers, n)
	var next atomic.Int64
	loop := func() {
		var buf []float32
		if scratchLen > 0 {
			p := b.getScratch(scratchLen)
			defer b.scratch.Put(p)
			buf = *p
		}
		for {
			i := int(next.Add(1) - 1)
			if i >= n {
				return
			}
			fn(i, buf)
		}
	}
	if w == 1 {
		loop()
		return
	}
	var wg sync.WaitGroup
	wg.Add(w - 1)
	for range w - 1 {
		go func() {
			defer wg.Done()
			loop()
		}()
	}
	loop()
	wg.Wait()
}

// parallelRange splits [0, n) into chunks of at least grain items and runs fn on them in
// parallel.
func (b *Backend) parallelRange(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	grain = max(grain, 1)
	chunks := min(b.workers*4, (n+grain-1)/grain)
	if chunks <= 1 {
		fn(0, n)
		return
	}
	size := (n + chunks - 1) / chunks
	chunks = (n + size - 1) / size
	b.parallel(chunks, 0, func(c int, _ []float32) { fn(c*size, min(n, (c+1)*size)) })
}

// getScratch returns a float32 buffer of length n from the backend's pool (contents undefined);
// b.scratch.Put gives it back.
func (b *Backend) getScratch(n int) *[]float32 {
	if p, ok := b.scratch.Get().(*[]float32); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n)
	return &s
}
