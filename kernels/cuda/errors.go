package cuda

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

// cuResult is the driver's CUresult (and, for cuBLAS calls, cublasStatus_t).
type cuResult int32

// Result codes the wrappers look at.
const (
	cudaSuccess         cuResult = 0
	cudaErrOutOfMemory  cuResult = 2
	cudaErrNotInit      cuResult = 3
	cudaErrNoDevice     cuResult = 100
	cudaErrInvalidDev   cuResult = 101
	cudaErrNotFound     cuResult = 500
	cudaErrNotSupported cuResult = 801
)

// resultNames backs cuGetErrorName when the driver cannot name a code (or is a fake).
var resultNames = map[cuResult]string{
	0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY",
	3: "CUDA_ERROR_NOT_INITIALIZED", 4: "CUDA_ERROR_DEINITIALIZED", 34: "CUDA_ERROR_STUB_LIBRARY",
	100: "CUDA_ERROR_NO_DEVICE", 101: "CUDA_ERROR_INVALID_DEVICE", 200: "CUDA_ERROR_INVALID_IMAGE",
	201: "CUDA_ERROR_INVALID_CONTEXT", 218: "CUDA_ERROR_INVALID_PTX", 222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
	400: "CUDA_ERROR_INVALID_HANDLE", 500: "CUDA_ERROR_NOT_FOUND", 700: "CUDA_ERROR_ILLEGAL_ADDRESS",
	701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", 702: "CUDA_ERROR_LAUNCH_TIMEOUT", 719: "CUDA_ERROR_LAUNCH_FAILED",
	801: "CUDA_ERROR_NOT_SUPPORTED", 900: "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
	901: "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", 999: "CUDA_ERROR_UNKNOWN",
}

// Error is a failed driver or cuBLAS call.
type Error struct {
	Op   string   // the API entry point, e.g. "cuMemAlloc"
	Code cuResult // the CUresult / cublasStatus_t
	Name string   // e.g. "CUDA_ERROR_OUT_OF_MEMORY"
}

func (e *Error) Error() string { return e.Op + ": " + e.Name }

// Is lets errors.Is(err, kernels.ErrNoDevice) hold for the no-device results.
func (e *Error) Is(target error) bool {
	return target == kernels.ErrNoDevice && (e.Code == cudaErrNoDevice || e.Code == cudaErrInvalidDev)
}

// check turns a CUresult into nil or an *Error naming op.
func (d *driver) check(op string, r cuResult) error {
	if r == cudaSuccess {
		return nil
	}
	return &Error{Op: op, Code: r, Name: d.errorName(r)}
}

// errorName asks the driver for r's name, falling back to the built-in table.
func (d *driver) errorName(r cuResult) string {
	if d != nil && d.cuGetErrorName != nil {
		var p *byte
		if d.cuGetErrorName(r, &p) == cudaSuccess && p != nil {
			return goString(p)
		}
	}
	if n, ok := resultNames[r]; ok {
		return n
	}
	return fmt.Sprintf("CUresult(%d)", int32(r))
}

// goString copies a NUL-terminated C string.
func goString(p *byte) string {
	if p == nil {
		return ""
	}
	var b []byte
	for ptr := unsafe.Pointer(p); *(*byte)(ptr) != 0; ptr = unsafe.Add(ptr, 1) {
		b = append(b, *(*byte)(ptr))
		if len(b) > 4096 {
			break
		}
	}
	return string(b)
}

// errClosed is returned by ops on a closed backend.
var errClosed = errors.New("cuda: backend closed")
