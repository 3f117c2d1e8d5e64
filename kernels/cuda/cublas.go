package cuda

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// cublas is the raw symbol table of libcublas (13, else 12).
type cublas struct {
	create       func(h *uintptr) cuResult
	destroy      func(h uintptr) cuResult
	setStream    func(h, s uintptr) cuResult
	setWorkspace func(h, ws uintptr, n uint64) cuResult // optional (cuBLAS ≥ 11.x)
	setMathMode  func(h uintptr, mode int32) cuResult
	gemmEx       func(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, a uintptr, at int32, lda int32,
		b uintptr, bt int32, ldb int32, beta unsafe.Pointer, c uintptr, ct int32, ldc int32, compute int32, algo int32) cuResult
}

// cuBLAS / CUDA library constants.
const (
	cublasOpN          = 0
	cublasOpT          = 1
	cudaR32F           = 0
	cudaR16F           = 2
	cudaR16BF          = 14
	cublasCompute32F   = 68
	cublasGemmDefault  = -1
	cublasDefaultMath  = 0
	cublasWorkspaceMiB = 32
)

var cublasStatusNames = map[cuResult]string{
	1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
	8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
	14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

func cublasCheck(op string, r cuResult) error {
	if r == 0 {
		return nil
	}
	n, ok := cublasStatusNames[r]
	if !ok {
		n = fmt.Sprintf("cublasStatus(%d)", int32(r))
	}
	return &Error{Op: op, Code: r, Name: n}
}

func (c *cublas) symbols() []symbol {
	return []symbol{
		{&c.create, []string{"cublasCreate_v2"}, false},
		{&c.destroy, []string{"cublasDestroy_v2"}, false},
		{&c.setStream, []string{"cublasSetStream_v2"}, false},
		{&c.setWorkspace, []string{"cublasSetWorkspace_v2"}, true},
		{&c.setMathMode, []string{"cublasSetMathMode"}, false},
		{&c.gemmEx, []string{"cublasGemmEx"}, false},
	}
}

var (
	cublasOnce sync.Once
	cublasAPI  *cublas
	cublasErr  error
)

// loadCublas opens libcublas once per process (libcublasLt comes with it as a dependency).
func loadCublas() (*cublas, error) {
	cublasOnce.Do(func() {
		// cuBLASLt first, so libcublas finds it even when only the full paths resolve.
		openLib("libcublasLt.so.13", "libcublasLt.so.12")
		h, name, err := openLib("libcublas.so.13", "libcublas.so.12")
		if err != nil {
			cublasErr = err
			return
		}
		c := &cublas{}
		if err := bind(name, c.symbols(), func(s string) (uintptr, error) { return purego.Dlsym(h, s) }); err != nil {
			cublasErr = err
			return
		}
		cublasAPI = c
	})
	return cublasAPI, cublasErr
}
