package cpu

import (
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

var _ kernels.ReadMeter = (*Backend)(nil)

// readSink keeps the read passes' sums observable, so the compiler cannot drop the loads.
var readSink uint64

// ReadBandwidth implements kernels.ReadMeter on the host: a buffer of n bytes (n ≥ 1 MiB, a
// multiple of 64) is written once, so every page is resident, then read reps times by every
// worker at once, each streaming its contiguous share of the buffer (eight independent sums of
// uint64 words). Pick n far larger than the last-level cache, or the rate is the cache's.
func (b *Backend) ReadBandwidth(n int64, reps int) (float64, error) {
	if n < 1<<20 || n%64 != 0 {
		return 0, fmt.Errorf("cpu: read bandwidth: buffer of %d bytes: want a multiple of 64, at least 1 MiB", n)
	}
	if reps < 1 {
		return 0, fmt.Errorf("cpu: read bandwidth: reps %d: want at least 1", reps)
	}
	buf := make([]uint64, n/8)
	for i := range buf {
		buf[i] = uint64(i)
	}
	w := max(1, b.workers)
	share := (len(buf) / w) &^ 7
	pass := func() uint64 {
		sums := make([]uint64, w)
		var wg sync.WaitGroup
		for i := range w {
			lo, hi := i*share, (i+1)*share
			if i == w-1 {
				hi = len(buf)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sums[i] = sumWords(buf[lo:hi])
			}()
		}
		wg.Wait()
		var s uint64
		for _, v := range sums {
			s += v
		}
		return s
	}
	readSink += pass()
	t0 := time.Now()
	for range reps {
		readSink += pass()
	}
	s := time.Since(t0).Seconds()
	return float64(n) * float64(reps) / s, nil
}

// sumWords adds the words of p with eight independent accumulators (len(p) need not be a
// multiple of 8).
func sumWords(p []uint64) uint64 {
	var s0, s1, s2, s3, s4, s5, s6, s7 uint64
	i := 0
	for ; i+8 <= len(p); i += 8 {
		q := (*[8]uint64)(unsafe.Pointer(&p[i]))
		s0 += q[0]
		s1 += q[1]
		s2 += q[2]
		s3 += q[3]
		s4 += q[4]
		s5 += q[5]
		s6 += q[6]
		s7 += q[7]
	}
	for ; i < len(p); i++ {
		s0 += p[i]
	}
	return s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7
}
