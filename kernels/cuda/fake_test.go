package cuda

import (
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

// fakeDriver is a symbol table whose entry points succeed without a GPU, recording what the
// backend asked for.
type fakeDriver struct {
	mu       sync.Mutex
	next     uintptr
	allocs   int
	frees    int
	tids     map[int]bool
	launches []fakeLaunch
	captures int
	fns      []string // kernel names; a function handle is its index + 1
}

type fakeLaunch struct {
	fn     uintptr
	name   string
	grid   [3]uint32
	params unsafe.Pointer
	args   []uint64 // first n slots, read during the call
}

func (f *fakeDriver) seen() {
	f.mu.Lock()
	f.tids[syscall.Gettid()] = true
	f.mu.Unlock()
}

// table returns a driver whose every call succeeds; nargs is how many parameter slots a fake
// launch decodes.
func (f *fakeDriver) table(nargs int) *driver {
	f.tids = map[int]bool{}
	f.next = 0x10000
	ok := func() cuResult { f.seen(); return cudaSuccess }
	return &driver{
		cuInit:                    func(uint32) cuResult { return ok() },
		cuDriverGetVersion:        func(v *int32) cuResult { *v = 13000; return ok() },
		cuDeviceGetCount:          func(n *int32) cuResult { *n = 1; return ok() },
		cuDeviceGet:               func(d *int32, o int32) cuResult { *d = o; return ok() },
		cuDeviceGetName:           func(*byte, int32, int32) cuResult { return ok() },
		cuDeviceGetAttribute:      func(v *int32, a, d int32) cuResult { *v = 132; return ok() },
		cuDevicePrimaryCtxRetain:  func(c *uintptr, d int32) cuResult { *c = 0xc0; return ok() },
		cuDevicePrimaryCtxRelease: func(int32) cuResult { return ok() },
		cuCtxSetCurrent:           func(uintptr) cuResult { return ok() },
		cuMemGetInfo:              func(a, b *uint64) cuResult { return ok() },
		cuMemAlloc: func(p *uintptr, n uint64) cuResult {
			f.allocs++
			*p = f.next
			f.next += uintptr(n+255) &^ 255
			return ok()
		},
		cuMemFree:           func(uintptr) cuResult { f.frees++; return ok() },
		cuMemcpyHtoD:        func(uintptr, unsafe.Pointer, uint64) cuResult { return ok() },
		cuMemcpyHtoDAsync:   func(uintptr, unsafe.Pointer, uint64, uintptr) cuResult { return ok() },
		cuMemcpyDtoHAsync:   func(unsafe.Pointer, uintptr, uint64, uintptr) cuResult { return ok() },
		cuMemcpyDtoDAsync:   func(_, _ uintptr, _ uint64, _ uintptr) cuResult { return ok() },
		cuMemsetD8Async:     func(uintptr, uint8, uint64, uintptr) cuResult { return ok() },
		cuStreamCreate:      func(s *uintptr, _ uint32) cuResult { *s = 0x5; return ok() },
		cuStreamDestroy:     func(uintptr) cuResult { return ok() },
		cuStreamSynchronize: func(uintptr) cuResult { return ok() },
		cuEventCreate:       func(e *uintptr, _ uint32) cuResult { *e = 0xe; return ok() },
		cuEventRecord:       func(_, _ uintptr) cuResult { return ok() },
		cuEventSynchronize:  func(uintptr) cuResult { return ok() },
		cuEventElapsedTime:  func(ms *float32, _, _ uintptr) cuResult { *ms = 1; return ok() },
		cuEventDestroy:      func(uintptr) cuResult { return ok() },
		cuModuleLoadData:    func(m *uintptr, _ unsafe.Pointer) cuResult { *m = 0x3; return ok() },
		cuModuleUnload:      func(uintptr) cuResult { return ok() },
		cuModuleGetFunction: func(fn *uintptr, _ uintptr, name *byte) cuResult {
			f.fns = append(f.fns, goString(name))
			*fn = uintptr(len(f.fns))
			return ok()
		},
		cuFuncSetAttribute: func(uintptr, int32, int32) cuResult { return ok() },
		cuLaunchKernel: func(fn uintptr, gx, gy, gz, bx, by, bz, sh uint32, s uintptr, params, extra unsafe.Pointer) cuResult {
			l := fakeLaunch{fn: fn, name: f.fns[fn-1], grid: [3]uint32{gx, gy, gz}, params: params}
			ptrs := unsafe.Slice((*unsafe.Pointer)(params), nargs)
			for _, p := range ptrs {
				l.args = append(l.args, *(*uint64)(p))
			}
			f.launches = append(f.launches, l)
			return ok()
		},
		cuStreamBeginCapture:        func(uintptr, int32) cuResult { f.captures++; return ok() },
		cuStreamEndCapture:          func(_ uintptr, g *uintptr) cuResult { *g = 0x9; return ok() },
		cuGraphInstantiateWithFlags: func(e *uintptr, _ uintptr, _ uint64) cuResult { *e = 0xa; return ok() },
		cuGraphLaunch:               func(_, _ uintptr) cuResult { return ok() },
		cuGraphExecDestroy:          func(uintptr) cuResult { return ok() },
		cuGraphDestroy:              func(uintptr) cuResult { return ok() },
		cuGetErrorName: func(r cuResult, s **byte) cuResult {
			if n, ok := resultNames[r]; ok {
				b := append([]byte(n), 0)
				*s = &b[0]
				return cudaSuccess
			}
			return 1
		},
	}
}

func fakeBackend(tb testing.TB, nargs int) (*Backend, *fakeDriver) {
	tb.Helper()
	f := &fakeDriver{}
	b, err := newBackend(f.table(nargs), nil, 0)
	if err != nil {
		tb.Fatalf("newBackend over the fake driver: %v", err)
	}
	tb.Cleanup(func() { b.Close() })
	return b, f
}

func TestErrorNames(t *testing.T) {
	f := &fakeDriver{}
	d := f.table(0)
	tests := []struct {
		name string
		op   string
		code cuResult
		want string
	}{
		{"success", "cuInit", 0, ""},
		{"oom", "cuMemAlloc", cudaErrOutOfMemory, "cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY"},
		{"context", "cuMemAlloc", 201, "cuMemAlloc: CUDA_ERROR_INVALID_CONTEXT"},
		{"unknown code", "cuLaunchKernel", 12345, "cuLaunchKernel: CUresult(12345)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := d.check(tc.op, tc.code)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("check(%d) = %v, want nil", tc.code, err)
				}
				return
			}
			if err == nil || err.Error() != tc.want {
				t.Fatalf("check(%d) = %v, want %q", tc.code, err, tc.want)
			}
		})
	}
	// Without cuGetErrorName the built-in table names the code.
	d.cuGetErrorName = nil
	if err := d.check("cuMemFree", 700); err.Error() != "cuMemFree: CUDA_ERROR_ILLEGAL_ADDRESS" {
		t.Fatalf("fallback name: %v", err)
	}
	if err := cublasCheck("cublasGemmEx", 15); err.Error() != "cublasGemmEx: CUBLAS_STATUS_NOT_SUPPORTED" {
		t.Fatalf("cublas name: %v", err)
	}
}

func TestNoDevice(t *testing.T) {
	tests := []struct {
		name  string
		patch func(d *driver)
	}{
		{"cuInit no device", func(d *driver) { d.cuInit = func(uint32) cuResult { return cudaErrNoDevice } }},
		{"stub library", func(d *driver) { d.cuInit = func(uint32) cuResult { return 34 } }},
		{"zero devices", func(d *driver) { d.cuDeviceGetCount = func(n *int32) cuResult { *n = 0; return 0 } }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeDriver{}
			d := f.table(0)
			tc.patch(d)
			b, err := newBackend(d, nil, 0)
			if err == nil {
				b.Close()
				t.Fatal("newBackend succeeded without a device")
			}
			if !errors.Is(err, kernels.ErrNoDevice) {
				t.Fatalf("error %v does not wrap kernels.ErrNoDevice", err)
			}
		})
	}
}

// TestNewWithoutDriver runs the real loader: on a machine without libcuda it must fail cleanly.
func TestNewWithoutDriver(t *testing.T) {
	b, err := New(0)
	if err == nil {
		defer b.Close()
		if !Available() {
			t.Fatal("New succeeded but Available is false")
		}
		t.Skip("cuda: a device is present; the no-driver path is covered by the fakes")
	}
	if !errors.Is(err, kernels.ErrNoDevice) {
		t.Fatalf("New without a device: %v does not wrap kernels.ErrNoDevice", err)
	}
	if Available() {
		t.Fatalf("Available() = true but New failed: %v", err)
	}
	t.Logf("New(0): %v", err)
}

func TestLaunchArgPacking(t *testing.T) {
	b, f := fakeBackend(t, 5)
	err := b.do(func() error {
		a := b.args.reset().ptr(0xdeadbeef00).i32(-7).f32(1.5).u64(1 << 40).i32(3)
		return b.launch("swiglu", dim3{2, 3, 1}, dim3{32, 1, 1}, 0, a)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.launches) != 1 {
		t.Fatalf("%d launches, want 1", len(f.launches))
	}
	l := f.launches[0]
	if l.name != "swiglu" || l.grid != [3]uint32{2, 3, 1} {
		t.Fatalf("launch %+v", l)
	}
	if l.args[0] != 0xdeadbeef00 {
		t.Errorf("pointer arg %#x", l.args[0])
	}
	if int32(uint32(l.args[1])) != -7 {
		t.Errorf("int arg %d", int32(uint32(l.args[1])))
	}
	if math.Float32frombits(uint32(l.args[2])) != 1.5 {
		t.Errorf("float arg %v", math.Float32frombits(uint32(l.args[2])))
	}
	if l.args[3] != 1<<40 || l.args[4] != 3 {
		t.Errorf("u64/int args %d %d", l.args[3], l.args[4])
	}
	// A zero-sized grid launches nothing.
	b.do(func() error { return b.launch("add", dim3{0, 1, 1}, dim3{32, 1, 1}, 0, b.args.reset()) })
	if len(f.launches) != 1 {
		t.Fatalf("empty grid launched")
	}
}

func TestOneLockedThread(t *testing.T) {
	b, f := fakeBackend(t, 0)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x, err := b.Alloc(kernels.F32, 64)
			if err != nil {
				t.Error(err)
				return
			}
			b.Free(x)
		}()
	}
	wg.Wait()
	if len(f.tids) != 1 {
		t.Fatalf("driver called from %d OS threads, want 1", len(f.tids))
	}
}

func TestPoolReuse(t *testing.T) {
	b, f := fakeBackend(t, 0)
	base := f.allocs
	for i := 0; i < 100; i++ {
		x, err := b.Alloc(kernels.F32, 1000+i)
		if err != nil {
			t.Fatal(err)
		}
		b.Free(x)
	}
	if got := f.allocs - base; got > 2 {
		t.Fatalf("100 alloc/free pairs of one size class made %d cuMemAlloc calls", got)
	}
	tests := []struct{ n, class int }{{1, 8}, {256, 8}, {257, 9}, {1 << 26, 26}, {1<<26 + 1, -1}}
	for _, tc := range tests {
		if c := classOf(tc.n); c != tc.class {
			t.Errorf("classOf(%d) = %d, want %d", tc.n, c, tc.class)
		}
	}
}

func TestOwnershipAndShapes(t *testing.T) {
	b, _ := fakeBackend(t, 0)
	b2, _ := fakeBackend(t, 0)
	x, _ := b.Alloc(kernels.F32, 4, 8)
	y, _ := b2.Alloc(kernels.F32, 4, 8)
	if err := b.Add(x, y); !errors.Is(err, kernels.ErrWrongOwner) {
		t.Errorf("Add across backends: %v", err)
	}
	z, _ := b.Alloc(kernels.F32, 4, 9)
	if err := b.Add(x, z); !errors.Is(err, kernels.ErrShape) {
		t.Errorf("Add of mismatched shapes: %v", err)
	}
	b.Free(z)
	if err := b.Add(x, z); !errors.Is(err, kernels.ErrFreed) {
		t.Errorf("Add of a freed tensor: %v", err)
	}
	if err := b.Upload(x, []int32{1}); !errors.Is(err, kernels.ErrDType) {
		t.Errorf("Upload []int32 to F32: %v", err)
	}
	if err := b.MatMul(x, x, x); !errors.Is(err, kernels.ErrShape) && !errors.Is(err, kernels.ErrUnsupported) {
		t.Errorf("MatMul without cuBLAS: %v", err)
	}
}

func TestCaptureKeepsFreedBuffers(t *testing.T) {
	b, f := fakeBackend(t, 0)
	x, _ := b.Alloc(kernels.F32, 16)
	var tmp *kernels.Tensor
	g, err := b.Capture(func() error {
		var err error
		tmp, err = b.Alloc(kernels.F32, 16)
		if err != nil {
			return err
		}
		if err := b.Add(x, tmp); err != nil {
			return err
		}
		b.Free(tmp)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.captures != 1 {
		t.Fatalf("%d captures", f.captures)
	}
	// tmp's buffer is held by the graph: a new allocation must not get it.
	y, _ := b.Alloc(kernels.F32, 16)
	if ptrOf(y) == tmp.Storage.(*devBuf).ptr {
		t.Fatal("a buffer freed during capture was reused while the graph lives")
	}
	if err := g.Launch(); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	// A failing capture reports fn's error.
	_, err = b.Capture(func() error { return errors.New("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("capture error %v", err)
	}
}

// TestExpertsDispatch checks which kernels ExpertsFFN launches for each activation precision and
// shape: the hi/lo tensor-core path by default, the single-bf16 one for ActDType BF16, and the
// CUDA-core kernels when the shape does not fit the tensor-core tiles.
func TestExpertsDispatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		H, I int
		act  kernels.DType
		want []string
	}{
		{"exact", 256, 128, 0, []string{"route_group", "split_bf16", "expert_gateup_mma", "expert_down_mma", "expert_combine"}},
		{"exact, explicit f32", 256, 128, kernels.F32, []string{"route_group", "split_bf16", "expert_gateup_mma", "expert_down_mma", "expert_combine"}},
		{"bf16 activations", 256, 128, kernels.BF16, []string{"route_group", "cvt_f32", "expert_gateup_mma1", "expert_down_mma1", "expert_combine"}},
		{"shape off the mma tiles", 64, 32, kernels.BF16, []string{"route_group", "expert_gateup", "expert_down", "expert_combine"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, f := fakeBackend(t, 0)
			T, k, E := 3, 2, 4
			set := &kernels.ExpertSet{Experts: make([]*kernels.Expert, E), ActDType: tc.act}
			for e := range set.Experts {
				gu, _ := b.Alloc(kernels.BF16, 2*tc.I, tc.H)
				dn, _ := b.Alloc(kernels.BF16, tc.H, tc.I)
				set.Experts[e] = &kernels.Expert{GateUp: gu, Down: dn}
			}
			dst, _ := b.Alloc(kernels.F32, T, tc.H)
			x, _ := b.Alloc(kernels.F32, T, tc.H)
			ids, _ := b.Alloc(kernels.I32, T, k)
			wts, _ := b.Alloc(kernels.F32, T, k)
			f.launches = nil
			if err := b.ExpertsFFN(dst, x, ids, wts, set); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range f.launches {
				got = append(got, l.name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("launched %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDeviceOverFakeDriver(t *testing.T) {
	f := &fakeDriver{}
	d := f.table(0)
	d.cuDeviceGetName = func(name *byte, n int32, dev int32) cuResult {
		copy(unsafe.Slice(name, n), "NVIDIA Fake 80GB\x00")
		return cudaSuccess
	}
	d.cuDeviceGetUuid = func(u *[16]byte, dev int32) cuResult {
		for i := range u {
			u[i] = byte(0x10 + i)
		}
		return cudaSuccess
	}
	d.cuMemGetInfo = func(free, total *uint64) cuResult { *free, *total = 60<<30, 80<<30; return cudaSuccess }
	b, err := newBackend(d, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	dv, err := b.Device()
	if err != nil {
		t.Fatal(err)
	}
	want := kernels.Device{Index: 0, Name: "NVIDIA Fake 80GB", UUID: "GPU-10111213-1415-1617-1819-1a1b1c1d1e1f",
		MemoryTotalMiB: 80 << 10, MemoryFreeMiB: 60 << 10}
	if dv != want {
		t.Errorf("Device() = %+v, want %+v", dv, want)
	}
	d.cuMemGetInfo = func(free, total *uint64) cuResult { return cudaErrOutOfMemory }
	if _, err := b.Device(); err == nil || !strings.Contains(err.Error(), "cuMemGetInfo") {
		t.Errorf("Device() with a failing cuMemGetInfo: %v, want an error naming it", err)
	}
}

// TestNotConcurrent: the CUDA backend shares scratch buffers, the router mask and a running
// capture between the calls of a step, so it must declare that it is for one goroutine at a time.
func TestNotConcurrent(t *testing.T) {
	b, _ := fakeBackend(t, 0)
	if kernels.IsConcurrent(b) {
		t.Fatal("the CUDA backend declares kernels.Concurrent, but its steps share state between calls")
	}
}
