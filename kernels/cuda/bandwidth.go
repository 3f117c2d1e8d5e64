package cuda

import (
	"fmt"

	"github.com/dlmesh/dlmesh/kernels"
)

var _ kernels.ReadMeter = (*Backend)(nil)

// readKey is read_stream's "write only if the XOR of your words is this" value; a buffer set
// to one byte value XORs to 0 per 16-byte word, so no thread ever writes.
const readKey = 0x9e3779b9

// ReadBandwidth implements kernels.ReadMeter on the device: it allocates n bytes (n ≥ 1 MiB, a
// multiple of 16), sets them, runs read_stream over them once untimed, then reps times between
// two events, and returns n·reps / elapsed. read_stream only loads (16-byte streaming loads,
// four in flight per thread, 4 blocks of 512 threads per SM), so this is the read rate, not
// the half of it a device-to-device copy's bytes/s would be.
func (b *Backend) ReadBandwidth(n int64, reps int) (float64, error) {
	if n < 1<<20 || n%16 != 0 {
		return 0, fmt.Errorf("cuda: read bandwidth: buffer of %d bytes: want a multiple of 16, at least 1 MiB", n)
	}
	if reps < 1 {
		return 0, fmt.Errorf("cuda: read bandwidth: reps %d: want at least 1", reps)
	}
	var p, sink uintptr
	defer b.do(func() error {
		if p != 0 {
			b.d.cuMemFree(p)
		}
		if sink != 0 {
			b.d.cuMemFree(sink)
		}
		return nil
	})
	pass := func() error {
		a := b.args.reset().ptr(p).u64(uint64(n / 16)).i32(readKey).ptr(sink)
		return b.launch("read_stream", grid1(4*b.sms), dim3{512, 1, 1}, 0, a)
	}
	err := b.do(func() error {
		if err := b.d.check("cuMemAlloc", b.d.cuMemAlloc(&p, uint64(n))); err != nil {
			return err
		}
		if err := b.d.check("cuMemAlloc", b.d.cuMemAlloc(&sink, 4)); err != nil {
			return err
		}
		if err := b.d.check("cuMemsetD8Async", b.d.cuMemsetD8Async(p, 0x5a, uint64(n), b.stream)); err != nil {
			return err
		}
		return pass()
	})
	if err != nil {
		return 0, fmt.Errorf("cuda: read bandwidth: %w", err)
	}
	t, err := b.newTimer()
	if err != nil {
		return 0, fmt.Errorf("cuda: read bandwidth: %w", err)
	}
	defer t.Close()
	if err := t.Start(); err != nil {
		return 0, fmt.Errorf("cuda: read bandwidth: %w", err)
	}
	for range reps {
		if err := b.do(pass); err != nil {
			return 0, fmt.Errorf("cuda: read bandwidth: %w", err)
		}
	}
	if err := t.Stop(); err != nil {
		return 0, fmt.Errorf("cuda: read bandwidth: %w", err)
	}
	ms, err := t.Ms()
	if err != nil {
		return 0, fmt.Errorf("cuda: read bandwidth: %w", err)
	}
	if ms <= 0 {
		return 0, fmt.Errorf("cuda: read bandwidth: %d passes timed at %v ms", reps, ms)
	}
	return float64(n) * float64(reps) / (float64(ms) / 1000), nil
}
