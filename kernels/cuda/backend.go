package cuda

import (
	"bytes"
	"errors"
	"fmt"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

// Backend is kernels.Backend on one CUDA device: its primary context, one non-blocking stream,
// a memory pool, the llada2 PTX module and a cuBLAS handle, all owned by one locked OS thread.
// It is for one goroutine at a time (Concurrent reports false): see Concurrent.
type Backend struct {
	d    *driver
	blas *cublas // nil: MatMul and LMHead report ErrUnsupported
	th   *thread
	name string
	idx  int // device ordinal
	dev  int32
	ctx  uintptr

	// owned by th:
	stream  uintptr
	mod     *module
	pool    pool
	blasH   uintptr
	args    kernelArgs
	scratch map[string]*devBuf // grow-only work buffers, keyed by purpose
	retired []*devBuf          // outgrown scratch: a captured graph may still use it
	sets    map[*kernels.ExpertSet]*setTable
	allowed *devBuf        // router mask, uploaded when it changes
	allowH  []int32        // host copy of the uploaded mask
	capture *graph         // non-nil while a capture is running
	sms     int            // multiprocessor count
	smem    map[string]int // raised dynamic shared-memory limits
	closed  bool
}

var (
	_ kernels.Backend    = (*Backend)(nil)
	_ kernels.Randomizer = (*Backend)(nil)
	_ kernels.Grapher    = (*Backend)(nil)
	_ kernels.Describer  = (*Backend)(nil)
	_ kernels.Concurrent = (*Backend)(nil)
)

// Available reports whether a CUDA driver and at least one device are present.
func Available() bool {
	d, err := loadDriver()
	if err != nil || d.cuInit(0) != cudaSuccess {
		return false
	}
	var n int32
	return d.cuDeviceGetCount(&n) == cudaSuccess && n > 0
}

// New opens device deviceIndex. Without a driver or device the error wraps kernels.ErrNoDevice.
func New(deviceIndex int) (*Backend, error) {
	d, err := loadDriver()
	if err != nil {
		return nil, fmt.Errorf("cuda: %w: %w", kernels.ErrNoDevice, err)
	}
	blas, blasErr := loadCublas()
	if blasErr != nil {
		blas = nil // MatMul/LMHead then report ErrUnsupported naming the cause
	}
	b, err := newBackend(d, blas, deviceIndex)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// newBackend is New over a given symbol table (tests pass fakes).
func newBackend(d *driver, blas *cublas, deviceIndex int) (*Backend, error) {
	b := &Backend{d: d, blas: blas, name: fmt.Sprintf("cuda:%d", deviceIndex), idx: deviceIndex,
		scratch: map[string]*devBuf{}, sets: map[*kernels.ExpertSet]*setTable{}}
	b.pool.d = d
	th, err := startThread(func() error { return b.open(deviceIndex) })
	if err != nil {
		if errors.Is(err, kernels.ErrNoDevice) {
			return nil, fmt.Errorf("cuda: device %d: %w", deviceIndex, err)
		}
		return nil, fmt.Errorf("cuda: device %d: %w", deviceIndex, err)
	}
	b.th = th
	return b, nil
}

// open runs on the context's thread: init, context, stream, module, cuBLAS.
func (b *Backend) open(idx int) error {
	d := b.d
	if err := d.check("cuInit", d.cuInit(0)); err != nil {
		if e := (*Error)(nil); errors.As(err, &e) && (e.Code == cudaErrNoDevice || e.Code == 34 || e.Code == cudaErrNotInit) {
			return fmt.Errorf("%w: %w", kernels.ErrNoDevice, err)
		}
		return err
	}
	var n int32
	if err := d.check("cuDeviceGetCount", d.cuDeviceGetCount(&n)); err != nil {
		return err
	}
	if idx < 0 || int32(idx) >= n {
		return fmt.Errorf("%w: index %d of %d devices", kernels.ErrNoDevice, idx, n)
	}
	if err := d.check("cuDeviceGet", d.cuDeviceGet(&b.dev, int32(idx))); err != nil {
		return err
	}
	if err := d.check("cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(&b.ctx, b.dev)); err != nil {
		return err
	}
	if err := d.check("cuCtxSetCurrent", d.cuCtxSetCurrent(b.ctx)); err != nil {
		d.cuDevicePrimaryCtxRelease(b.dev)
		return err
	}
	var sms int32
	d.cuDeviceGetAttribute(&sms, attrMultiprocessors, b.dev)
	b.sms = max(int(sms), 1)
	if err := d.check("cuStreamCreate", d.cuStreamCreate(&b.stream, streamNonBlocking)); err != nil {
		d.cuDevicePrimaryCtxRelease(b.dev)
		return err
	}
	m, err := loadModule(d, llada2PTX)
	if err != nil {
		d.cuStreamDestroy(b.stream)
		d.cuDevicePrimaryCtxRelease(b.dev)
		return err
	}
	b.mod = m
	if b.blas != nil {
		if err := b.openBlas(); err != nil {
			b.blas = nil
		}
	}
	return nil
}

func (b *Backend) openBlas() error {
	c := b.blas
	if err := cublasCheck("cublasCreate", c.create(&b.blasH)); err != nil {
		return err
	}
	if err := cublasCheck("cublasSetStream", c.setStream(b.blasH, b.stream)); err != nil {
		return err
	}
	c.setMathMode(b.blasH, cublasDefaultMath)
	if c.setWorkspace != nil {
		ws, err := b.scratchBuf("cublas.workspace", cublasWorkspaceMiB<<20)
		if err != nil {
			return err
		}
		return cublasCheck("cublasSetWorkspace", c.setWorkspace(b.blasH, ws.ptr, uint64(ws.size)))
	}
	return nil
}

// do runs f on the context's thread.
func (b *Backend) do(f func() error) error {
	if b == nil || b.th == nil {
		return errClosed
	}
	return b.th.call(func() error {
		if b.closed {
			return errClosed
		}
		return f()
	})
}

// Concurrent implements kernels.Concurrent: false. Each driver call is made on the context's
// thread, but a step is a sequence of them on one stream that shares state between calls — the
// grow-only scratch buffers, the uploaded router mask, and a running graph capture, which would
// record another goroutine's ops into its graph — so two goroutines interleaving their steps
// would corrupt each other. (One stream and scratch set per micro-batch would lift this.)
func (b *Backend) Concurrent() bool { return false }

// Name implements kernels.Backend.
func (b *Backend) Name() string { return b.name }

// Device implements kernels.Describer: the device's name, UUID and current free/total memory.
func (b *Backend) Device() (kernels.Device, error) {
	dv := kernels.Device{Index: b.idx}
	err := b.do(func() error {
		d := b.d
		name := make([]byte, 256)
		if err := d.check("cuDeviceGetName", d.cuDeviceGetName(&name[0], int32(len(name)), b.dev)); err != nil {
			return err
		}
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		dv.Name = string(name)
		if d.cuDeviceGetUuid != nil {
			var u [16]byte
			if d.cuDeviceGetUuid(&u, b.dev) == cudaSuccess {
				dv.UUID = fmt.Sprintf("GPU-%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
			}
		}
		var free, total uint64
		if err := d.check("cuMemGetInfo", d.cuMemGetInfo(&free, &total)); err != nil {
			return err
		}
		dv.MemoryFreeMiB, dv.MemoryTotalMiB = free>>20, total>>20
		return nil
	})
	if err != nil {
		return kernels.Device{Index: b.idx}, fmt.Errorf("cuda: device %d: %w", b.idx, err)
	}
	return dv, nil
}

// Close implements kernels.Backend: frees every buffer, the module, stream and context.
func (b *Backend) Close() error {
	if b == nil || b.th == nil {
		return nil
	}
	err := b.th.call(func() error {
		if b.closed {
			return nil
		}
		d := b.d
		err := d.check("cuStreamSynchronize", d.cuStreamSynchronize(b.stream))
		if b.blas != nil && b.blasH != 0 {
			b.blas.destroy(b.blasH)
		}
		for _, s := range b.scratch {
			b.pool.put(s.ptr, s.size, s.class)
		}
		for _, s := range b.retired {
			b.pool.put(s.ptr, s.size, s.class)
		}
		for _, t := range b.sets {
			b.pool.put(t.buf.ptr, t.buf.size, t.buf.class)
		}
		if b.allowed != nil {
			b.pool.put(b.allowed.ptr, b.allowed.size, b.allowed.class)
		}
		b.pool.trim()
		b.mod.unload()
		d.cuStreamDestroy(b.stream)
		d.cuDevicePrimaryCtxRelease(b.dev)
		b.closed = true
		return err
	})
	b.th.stop()
	b.th = nil
	return err
}

// buf returns t's device buffer, checking ownership.
func (b *Backend) buf(op, arg string, t *kernels.Tensor) (*devBuf, error) {
	if t == nil {
		return nil, fmt.Errorf("cuda: %s: %s is nil: %w", op, arg, kernels.ErrShape)
	}
	db, ok := t.Storage.(*devBuf)
	if !ok || db.owner != b {
		return nil, fmt.Errorf("cuda: %s: %s: %w", op, arg, kernels.ErrWrongOwner)
	}
	if db.freed {
		return nil, fmt.Errorf("cuda: %s: %s: %w", op, arg, kernels.ErrFreed)
	}
	return db, nil
}

// ptrOf is buf for tensors already checked, returning the device pointer (0 for nil).
func ptrOf(t *kernels.Tensor) uintptr {
	if t == nil {
		return 0
	}
	return t.Storage.(*devBuf).ptr
}

// newTensor allocates (on the thread) a pooled tensor; zero fills it when zero.
func (b *Backend) newTensor(dt kernels.DType, shape []int, zero bool) (*kernels.Tensor, error) {
	if dt.Size() == 0 {
		return nil, fmt.Errorf("cuda: alloc: %v: %w", dt, kernels.ErrDType)
	}
	t := &kernels.Tensor{DType: dt, Shape: append([]int(nil), shape...)}
	for _, s := range shape {
		if s < 0 {
			return nil, fmt.Errorf("cuda: alloc: shape %v: %w", shape, kernels.ErrShape)
		}
	}
	n := t.Bytes()
	ptr, size, class, err := b.pool.get(n)
	if err != nil {
		return nil, fmt.Errorf("cuda: alloc %v: %w", t, err)
	}
	if zero {
		if err := b.d.check("cuMemsetD8Async", b.d.cuMemsetD8Async(ptr, 0, uint64(size), b.stream)); err != nil {
			b.pool.put(ptr, size, class)
			return nil, err
		}
	}
	t.Storage = &devBuf{ptr: ptr, size: size, class: class, owner: b}
	return t, nil
}

// Alloc implements kernels.Backend.
func (b *Backend) Alloc(dt kernels.DType, shape ...int) (*kernels.Tensor, error) {
	var t *kernels.Tensor
	err := b.do(func() (err error) { t, err = b.newTensor(dt, shape, true); return })
	return t, err
}

// Load implements kernels.Backend: the raw bytes are copied to the device.
func (b *Backend) Load(dt kernels.DType, shape []int, raw []byte) (*kernels.Tensor, error) {
	var t *kernels.Tensor
	err := b.do(func() (err error) {
		t, err = b.newTensor(dt, shape, false)
		if err != nil {
			return err
		}
		if len(raw) != t.Bytes() {
			b.freeBuf(t.Storage.(*devBuf))
			return fmt.Errorf("cuda: load %v: %d bytes: %w", t, len(raw), kernels.ErrShape)
		}
		if len(raw) == 0 {
			return nil
		}
		err = b.d.check("cuMemcpyHtoDAsync", b.d.cuMemcpyHtoDAsync(ptrOf(t), unsafe.Pointer(&raw[0]), uint64(len(raw)), b.stream))
		if err == nil {
			// raw is the caller's (maybe mmap'd) memory: finish before returning.
			err = b.d.check("cuStreamSynchronize", b.d.cuStreamSynchronize(b.stream))
		}
		return err
	})
	return t, err
}

func (b *Backend) freeBuf(db *devBuf) {
	if db.freed {
		return
	}
	db.freed = true
	if b.capture != nil { // the graph being recorded may use it: keep it as long as the graph
		b.capture.keep = append(b.capture.keep, db)
		return
	}
	b.pool.put(db.ptr, db.size, db.class)
}

// Free implements kernels.Backend.
func (b *Backend) Free(t *kernels.Tensor) {
	if t == nil {
		return
	}
	db, ok := t.Storage.(*devBuf)
	if !ok || db.owner != b {
		return
	}
	b.do(func() error { b.freeBuf(db); return nil })
}

// hostBytes views a host slice of the tensor's element type as bytes.
func hostBytes(op string, t *kernels.Tensor, v any) (unsafe.Pointer, int, error) {
	var p unsafe.Pointer
	var n int
	switch s := v.(type) {
	case []float32:
		if t.DType != kernels.F32 {
			return nil, 0, fmt.Errorf("cuda: %s: []float32 for %v: %w", op, t, kernels.ErrDType)
		}
		n = len(s)
		if n > 0 {
			p = unsafe.Pointer(&s[0])
		}
	case []int32:
		if t.DType != kernels.I32 {
			return nil, 0, fmt.Errorf("cuda: %s: []int32 for %v: %w", op, t, kernels.ErrDType)
		}
		n = len(s)
		if n > 0 {
			p = unsafe.Pointer(&s[0])
		}
	case []uint16:
		if t.DType != kernels.BF16 && t.DType != kernels.F16 {
			return nil, 0, fmt.Errorf("cuda: %s: []uint16 for %v: %w", op, t, kernels.ErrDType)
		}
		n = len(s)
		if n > 0 {
			p = unsafe.Pointer(&s[0])
		}
	default:
		return nil, 0, fmt.Errorf("cuda: %s: host type %T: %w", op, v, kernels.ErrDType)
	}
	if n != t.Numel() {
		return nil, 0, fmt.Errorf("cuda: %s: %d elements for %v: %w", op, n, t, kernels.ErrShape)
	}
	return p, n * t.DType.Size(), nil
}

// Upload implements kernels.Backend. Not allowed while capturing (pageable host memory).
func (b *Backend) Upload(t *kernels.Tensor, src any) error {
	return b.do(func() error {
		if _, err := b.buf("upload", "t", t); err != nil {
			return err
		}
		p, n, err := hostBytes("upload", t, src)
		if err != nil || n == 0 {
			return err
		}
		// Pageable memory: the call returns once src has been staged, so src may change after.
		return b.d.check("cuMemcpyHtoDAsync", b.d.cuMemcpyHtoDAsync(ptrOf(t), p, uint64(n), b.stream))
	})
}

// Download implements kernels.Backend.
func (b *Backend) Download(dst any, t *kernels.Tensor) error {
	return b.do(func() error {
		if _, err := b.buf("download", "t", t); err != nil {
			return err
		}
		p, n, err := hostBytes("download", t, dst)
		if err != nil {
			return err
		}
		if n > 0 {
			if err := b.d.check("cuMemcpyDtoHAsync", b.d.cuMemcpyDtoHAsync(p, ptrOf(t), uint64(n), b.stream)); err != nil {
				return err
			}
		}
		return b.d.check("cuStreamSynchronize", b.d.cuStreamSynchronize(b.stream))
	})
}

// Sync implements kernels.Backend.
func (b *Backend) Sync() error {
	return b.do(func() error { return b.d.check("cuStreamSynchronize", b.d.cuStreamSynchronize(b.stream)) })
}

// scratchBuf returns the grow-only work buffer named key with at least n bytes (thread only).
func (b *Backend) scratchBuf(key string, n int) (*devBuf, error) {
	if s := b.scratch[key]; s != nil && s.size >= n {
		return s, nil
	}
	ptr, size, class, err := b.pool.get(n)
	if err != nil {
		return nil, err
	}
	if old := b.scratch[key]; old != nil {
		b.retired = append(b.retired, old) // a captured graph may still point at it
	}
	s := &devBuf{ptr: ptr, size: size, class: class, owner: b}
	b.scratch[key] = s
	return s, nil
}

// launch enqueues kernel name (thread only); a is b.args after reset.
func (b *Backend) launch(name string, grid, block dim3, shmem int, a *kernelArgs) error {
	f, err := b.mod.fn(name)
	if err != nil {
		return err
	}
	return b.d.launch(name, f, grid, block, shmem, b.stream, a)
}

// poison fills t with 0xFF bytes (NaN for F32/BF16, -1 for I32): tests use it to catch
// elements an op failed to write.
func (b *Backend) poison(t *kernels.Tensor) error {
	return b.do(func() error {
		if _, err := b.buf("poison", "t", t); err != nil {
			return err
		}
		return b.d.check("cuMemsetD8Async", b.d.cuMemsetD8Async(ptrOf(t), 0xFF, uint64(t.Bytes()), b.stream))
	})
}

// FillRandom implements kernels.Randomizer on the device: element i gets a hash of (seed, i)
// mapped to [-scale, scale) (I32: [0, scale)).
func (b *Backend) FillRandom(t *kernels.Tensor, seed uint64, scale float32) error {
	return b.do(func() error {
		if _, err := b.buf("fill random", "t", t); err != nil {
			return err
		}
		n := t.Numel()
		a := b.args.reset().ptr(ptrOf(t)).u64(uint64(n)).u64(seed).f32(scale).i32(int(t.DType))
		return b.launch("fill_random", grid1(min((n+255)/256, 65535)), dim3{256, 1, 1}, 0, a)
	})
}
