package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// driver is the raw symbol table of libcuda.so.1: one func field per entry point, filled by
// loadDriver with purego, or by a test with fakes. Pointers are CUdeviceptr/handles as uintptr.
type driver struct {
	cuInit                      func(flags uint32) cuResult
	cuDriverGetVersion          func(v *int32) cuResult
	cuDeviceGetCount            func(n *int32) cuResult
	cuDeviceGet                 func(dev *int32, ordinal int32) cuResult
	cuDeviceGetName             func(name *byte, n int32, dev int32) cuResult
	cuDeviceGetUuid             func(uuid *[16]byte, dev int32) cuResult // optional
	cuDeviceGetAttribute        func(v *int32, attr int32, dev int32) cuResult
	cuDevicePrimaryCtxRetain    func(ctx *uintptr, dev int32) cuResult
	cuDevicePrimaryCtxRelease   func(dev int32) cuResult
	cuCtxSetCurrent             func(ctx uintptr) cuResult
	cuMemGetInfo                func(free, total *uint64) cuResult
	cuMemAlloc                  func(p *uintptr, size uint64) cuResult
	cuMemFree                   func(p uintptr) cuResult
	cuMemcpyHtoD                func(dst uintptr, src unsafe.Pointer, n uint64) cuResult
	cuMemcpyHtoDAsync           func(dst uintptr, src unsafe.Pointer, n uint64, s uintptr) cuResult
	cuMemcpyDtoHAsync           func(dst unsafe.Pointer, src uintptr, n uint64, s uintptr) cuResult
	cuMemcpyDtoDAsync           func(dst, src uintptr, n uint64, s uintptr) cuResult
	cuMemsetD8Async             func(dst uintptr, v uint8, n uint64, s uintptr) cuResult
	cuStreamCreate              func(s *uintptr, flags uint32) cuResult
	cuStreamDestroy             func(s uintptr) cuResult
	cuStreamSynchronize         func(s uintptr) cuResult
	cuEventCreate               func(e *uintptr, flags uint32) cuResult
	cuEventRecord               func(e, s uintptr) cuResult
	cuEventSynchronize          func(e uintptr) cuResult
	cuEventElapsedTime          func(ms *float32, start, end uintptr) cuResult
	cuEventDestroy              func(e uintptr) cuResult
	cuModuleLoadData            func(m *uintptr, image unsafe.Pointer) cuResult
	cuModuleUnload              func(m uintptr) cuResult
	cuModuleGetFunction         func(f *uintptr, m uintptr, name *byte) cuResult
	cuFuncSetAttribute          func(f uintptr, attr int32, v int32) cuResult
	cuLaunchKernel              func(f uintptr, gx, gy, gz, bx, by, bz, shmem uint32, s uintptr, params, extra unsafe.Pointer) cuResult
	cuStreamBeginCapture        func(s uintptr, mode int32) cuResult
	cuStreamEndCapture          func(s uintptr, g *uintptr) cuResult
	cuGraphInstantiateWithFlags func(exec *uintptr, g uintptr, flags uint64) cuResult
	cuGraphLaunch               func(exec, s uintptr) cuResult
	cuGraphExecDestroy          func(exec uintptr) cuResult
	cuGraphDestroy              func(g uintptr) cuResult
	cuGetErrorName              func(r cuResult, s **byte) cuResult
}

// Driver constants used here.
const (
	streamNonBlocking   = 1 // CU_STREAM_NON_BLOCKING
	captureModeRelaxed  = 2 // CU_STREAM_CAPTURE_MODE_RELAXED: pool misses may cuMemAlloc while capturing
	eventDefault        = 0
	attrMultiprocessors = 16 // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
	attrCCMajor         = 75 // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
	attrCCMinor         = 76
	funcAttrMaxDynSmem  = 8 // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
)

// symbol names one entry point: the field it fills and the names to try, newest first.
type symbol struct {
	fptr     any
	names    []string
	optional bool
}

func (d *driver) symbols() []symbol {
	return []symbol{
		{&d.cuInit, []string{"cuInit"}, false},
		{&d.cuDriverGetVersion, []string{"cuDriverGetVersion"}, false},
		{&d.cuDeviceGetCount, []string{"cuDeviceGetCount"}, false},
		{&d.cuDeviceGet, []string{"cuDeviceGet"}, false},
		{&d.cuDeviceGetName, []string{"cuDeviceGetName"}, false},
		{&d.cuDeviceGetUuid, []string{"cuDeviceGetUuid_v2", "cuDeviceGetUuid"}, true},
		{&d.cuDeviceGetAttribute, []string{"cuDeviceGetAttribute"}, false},
		{&d.cuDevicePrimaryCtxRetain, []string{"cuDevicePrimaryCtxRetain"}, false},
		{&d.cuDevicePrimaryCtxRelease, []string{"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"}, false},
		{&d.cuCtxSetCurrent, []string{"cuCtxSetCurrent"}, false},
		{&d.cuMemGetInfo, []string{"cuMemGetInfo_v2"}, false},
		{&d.cuMemAlloc, []string{"cuMemAlloc_v2"}, false},
		{&d.cuMemFree, []string{"cuMemFree_v2"}, false},
		{&d.cuMemcpyHtoD, []string{"cuMemcpyHtoD_v2"}, false},
		{&d.cuMemcpyHtoDAsync, []string{"cuMemcpyHtoDAsync_v2"}, false},
		{&d.cuMemcpyDtoHAsync, []string{"cuMemcpyDtoHAsync_v2"}, false},
		{&d.cuMemcpyDtoDAsync, []string{"cuMemcpyDtoDAsync_v2"}, false},
		{&d.cuMemsetD8Async, []string{"cuMemsetD8Async"}, false},
		{&d.cuStreamCreate, []string{"cuStreamCreate"}, false},
		{&d.cuStreamDestroy, []string{"cuStreamDestroy_v2"}, false},
		{&d.cuStreamSynchronize, []string{"cuStreamSynchronize"}, false},
		{&d.cuEventCreate, []string{"cuEventCreate"}, false},
		{&d.cuEventRecord, []string{"cuEventRecord"}, false},
		{&d.cuEventSynchronize, []string{"cuEventSynchronize"}, false},
		{&d.cuEventElapsedTime, []string{"cuEventElapsedTime_v2", "cuEventElapsedTime"}, false},
		{&d.cuEventDestroy, []string{"cuEventDestroy_v2"}, false},
		{&d.cuModuleLoadData, []string{"cuModuleLoadData"}, false},
		{&d.cuModuleUnload, []string{"cuModuleUnload"}, false},
		{&d.cuModuleGetFunction, []string{"cuModuleGetFunction"}, false},
		{&d.cuFuncSetAttribute, []string{"cuFuncSetAttribute"}, false},
		{&d.cuLaunchKernel, []string{"cuLaunchKernel"}, false},
		{&d.cuStreamBeginCapture, []string{"cuStreamBeginCapture_v2"}, false},
		{&d.cuStreamEndCapture, []string{"cuStreamEndCapture"}, false},
		{&d.cuGraphInstantiateWithFlags, []string{"cuGraphInstantiateWithFlags"}, false},
		{&d.cuGraphLaunch, []string{"cuGraphLaunch"}, false},
		{&d.cuGraphExecDestroy, []string{"cuGraphExecDestroy"}, false},
		{&d.cuGraphDestroy, []string{"cuGraphDestroy"}, false},
		{&d.cuGetErrorName, []string{"cuGetErrorName"}, false},
	}
}

// lookup resolves a symbol in an opened library; tests replace it.
type lookupFunc func(name string) (uintptr, error)

// bind fills every symbol of table from lookup; a missing required symbol is an error.
func bind(lib string, syms []symbol, lookup lookupFunc) error {
	for _, s := range syms {
		var addr uintptr
		for _, n := range s.names {
			if a, err := lookup(n); err == nil && a != 0 {
				addr = a
				break
			}
		}
		if addr == 0 {
			if s.optional {
				continue
			}
			return fmt.Errorf("cuda: %s lacks %s", lib, s.names[0])
		}
		purego.RegisterFunc(s.fptr, addr)
	}
	return nil
}

// openLib dlopens the first loadable of names, also under $CUDA_PATH/lib64 and /usr/local/cuda/lib64.
func openLib(names ...string) (uintptr, string, error) {
	var dirs []string
	if p := os.Getenv("CUDA_PATH"); p != "" {
		dirs = append(dirs, filepath.Join(p, "lib64"))
	}
	dirs = append(dirs, "/usr/local/cuda/lib64")
	var firstErr error
	for _, n := range names {
		cands := []string{n}
		for _, d := range dirs {
			cands = append(cands, filepath.Join(d, n))
		}
		for _, c := range cands {
			h, err := purego.Dlopen(c, purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if err == nil {
				return h, c, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	return 0, "", fmt.Errorf("cuda: dlopen %v: %w", names, firstErr)
}

var (
	driverOnce sync.Once
	driverAPI  *driver
	driverErr  error
)

// loadDriver opens libcuda.so.1 once per process.
func loadDriver() (*driver, error) {
	driverOnce.Do(func() {
		h, name, err := openLib("libcuda.so.1", "libcuda.so")
		if err != nil {
			driverErr = err
			return
		}
		d := &driver{}
		if err := bind(name, d.symbols(), func(s string) (uintptr, error) { return purego.Dlsym(h, s) }); err != nil {
			driverErr = err
			return
		}
		driverAPI = d
	})
	return driverAPI, driverErr
}

// errNoDriver marks a missing libcuda.
var errNoDriver = errors.New("cuda: no driver library")
