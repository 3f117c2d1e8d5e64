package cuda

import (
	"fmt"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

var _ kernels.Stager = (*Backend)(nil)

// pinnedBuf is one cuMemHostAlloc allocation.
type pinnedBuf struct {
	p unsafe.Pointer
	n int
}

// pinnedOf finds the pinned allocation holding all of b (thread only).
func (b *Backend) pinnedOf(op, arg string, h []byte) error {
	if len(h) == 0 {
		return nil
	}
	lo := uintptr(unsafe.Pointer(&h[0]))
	for _, pb := range b.pinned {
		start := uintptr(pb.p)
		if lo >= start && lo+uintptr(len(h)) <= start+uintptr(pb.n) {
			return nil
		}
	}
	return fmt.Errorf("cuda: %s: %s is not in pinned memory from AllocPinned: %w", op, arg, kernels.ErrUnsupported)
}

// AllocPinned implements kernels.Stager with cuMemHostAlloc (portable, not write-combined: the
// host reads the downloaded rows).
func (b *Backend) AllocPinned(n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: alloc pinned: %d bytes: %w", n, kernels.ErrShape)
	}
	var out []byte
	err := b.do(func() error {
		var p unsafe.Pointer
		if err := b.d.check("cuMemHostAlloc", b.d.cuMemHostAlloc(&p, uint64(n), memHostAllocPortable)); err != nil {
			return err
		}
		b.pinned = append(b.pinned, pinnedBuf{p: p, n: n})
		out = unsafe.Slice((*byte)(p), n)
		clear(out)
		return nil
	})
	return out, err
}

// FreePinned implements kernels.Stager. It waits for the stream first: a copy may still use p.
func (b *Backend) FreePinned(h []byte) error {
	if len(h) == 0 {
		return nil
	}
	return b.do(func() error {
		p := unsafe.Pointer(&h[0])
		for i, pb := range b.pinned {
			if pb.p == p {
				err := b.d.check("cuStreamSynchronize", b.d.cuStreamSynchronize(b.stream))
				b.pinned = append(b.pinned[:i], b.pinned[i+1:]...)
				if ferr := b.d.check("cuMemFreeHost", b.d.cuMemFreeHost(p)); err == nil {
					err = ferr
				}
				return err
			}
		}
		return fmt.Errorf("cuda: free pinned: not a buffer from AllocPinned: %w", kernels.ErrUnsupported)
	})
}

// DownloadAsync implements kernels.Stager: cuMemcpyDtoHAsync on the backend's stream, no wait.
func (b *Backend) DownloadAsync(dst []byte, t *kernels.Tensor) error {
	return b.do(func() error {
		if _, err := b.buf("download async", "t", t); err != nil {
			return err
		}
		if n := t.Numel() * t.DType.Size(); len(dst) != n {
			return fmt.Errorf("cuda: download async: %d bytes for %v (%d bytes): %w", len(dst), t, n, kernels.ErrShape)
		}
		if err := b.pinnedOf("download async", "dst", dst); err != nil || len(dst) == 0 {
			return err
		}
		return b.d.check("cuMemcpyDtoHAsync", b.d.cuMemcpyDtoHAsync(unsafe.Pointer(&dst[0]), ptrOf(t), uint64(len(dst)), b.stream))
	})
}

// UploadAsync implements kernels.Stager: cuMemcpyHtoDAsync on the backend's stream, no wait.
// Unlike Upload it may be captured into a graph (the source is pinned).
func (b *Backend) UploadAsync(t *kernels.Tensor, src []byte) error {
	return b.do(func() error {
		if _, err := b.buf("upload async", "t", t); err != nil {
			return err
		}
		if n := t.Numel() * t.DType.Size(); len(src) != n {
			return fmt.Errorf("cuda: upload async: %d bytes for %v (%d bytes): %w", len(src), t, n, kernels.ErrShape)
		}
		if err := b.pinnedOf("upload async", "src", src); err != nil || len(src) == 0 {
			return err
		}
		return b.d.check("cuMemcpyHtoDAsync", b.d.cuMemcpyHtoDAsync(ptrOf(t), unsafe.Pointer(&src[0]), uint64(len(src)), b.stream))
	})
}

// freePinned frees every pinned buffer left (thread only, at Close after the stream is idle).
func (b *Backend) freeAllPinned() {
	for _, pb := range b.pinned {
		b.d.cuMemFreeHost(pb.p)
	}
	b.pinned = nil
}
