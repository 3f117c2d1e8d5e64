package cuda

import (
	"errors"
	"math/bits"
)

// Pool size classes: powers of two from minClass to maxClass bytes; larger requests (weights,
// the embedding table) go straight to cuMemAlloc and straight back to cuMemFree.
const (
	minClassLog = 8  // 256 B: every buffer 256-byte aligned
	maxClassLog = 26 // 64 MiB
)

// devBuf is a device allocation: Tensor.Storage of this backend.
type devBuf struct {
	ptr   uintptr
	size  int // usable bytes (the class size for pooled buffers)
	class int // size-class log2, or -1 for a direct allocation
	owner *Backend
	freed bool
}

// pool keeps freed buffers in per-class free lists, so per-step allocations do not hit
// cuMemAlloc (which synchronises the device). It runs on the context's thread only.
type pool struct {
	d     *driver
	free  [maxClassLog + 1][]uintptr
	held  int // bytes in the free lists
	inUse int // bytes handed out
}

func classOf(n int) int {
	if n <= 1<<minClassLog {
		return minClassLog
	}
	c := bits.Len(uint(n - 1))
	if c > maxClassLog {
		return -1
	}
	return c
}

// get returns a buffer of at least n bytes.
func (p *pool) get(n int) (ptr uintptr, size, class int, err error) {
	if n <= 0 {
		n = 1
	}
	class = classOf(n)
	size = n
	if class >= 0 {
		size = 1 << class
		if l := p.free[class]; len(l) > 0 {
			ptr = l[len(l)-1]
			p.free[class] = l[:len(l)-1]
			p.held -= size
			p.inUse += size
			return ptr, size, class, nil
		}
	}
	ptr, err = p.alloc(size)
	if err != nil {
		return 0, 0, 0, err
	}
	p.inUse += size
	return ptr, size, class, nil
}

// alloc calls cuMemAlloc, trimming the free lists once on out-of-memory.
func (p *pool) alloc(size int) (uintptr, error) {
	var ptr uintptr
	err := p.d.check("cuMemAlloc", p.d.cuMemAlloc(&ptr, uint64(size)))
	var ce *Error
	if errors.As(err, &ce) && ce.Code == cudaErrOutOfMemory && p.held > 0 {
		p.trim()
		err = p.d.check("cuMemAlloc", p.d.cuMemAlloc(&ptr, uint64(size)))
	}
	return ptr, err
}

// put returns a buffer to its free list (or to the driver when it is a direct allocation).
func (p *pool) put(ptr uintptr, size, class int) error {
	p.inUse -= size
	if class < 0 {
		return p.d.check("cuMemFree", p.d.cuMemFree(ptr))
	}
	p.free[class] = append(p.free[class], ptr)
	p.held += size
	return nil
}

// trim frees every pooled buffer.
func (p *pool) trim() {
	for c := range p.free {
		for _, ptr := range p.free[c] {
			p.d.cuMemFree(ptr)
		}
		p.free[c] = nil
	}
	p.held = 0
}
