package cuda

import (
	_ "embed"
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// llada2PTX is the compiled ../llada2.cu (see gen.sh), loaded once per context.
//
//go:embed ptx/llada2.ptx
var llada2PTX string

// module is a loaded PTX module and its resolved functions.
type module struct {
	d   *driver
	h   uintptr
	fns map[string]uintptr
}

func loadModule(d *driver, ptx string) (*module, error) {
	img := append([]byte(ptx), 0)
	var h uintptr
	if err := d.check("cuModuleLoadData", d.cuModuleLoadData(&h, unsafe.Pointer(&img[0]))); err != nil {
		return nil, err
	}
	runtime.KeepAlive(img)
	return &module{d: d, h: h, fns: map[string]uintptr{}}, nil
}

// fn resolves a kernel by name, once.
func (m *module) fn(name string) (uintptr, error) {
	if f, ok := m.fns[name]; ok {
		return f, nil
	}
	cname := append([]byte(name), 0)
	var f uintptr
	if err := m.d.check("cuModuleGetFunction("+name+")", m.d.cuModuleGetFunction(&f, m.h, &cname[0])); err != nil {
		return 0, err
	}
	m.fns[name] = f
	return f, nil
}

func (m *module) unload() {
	if m != nil && m.h != 0 {
		m.d.cuModuleUnload(m.h)
		m.h = 0
	}
}

// maxKernelArgs bounds the parameters of one launch.
const maxKernelArgs = 24

// kernelArgs packs launch parameters the way cuLaunchKernel wants them: kernelParams is an
// array of pointers, one per parameter, each pointing at the parameter's value. Every value sits
// in its own 8-byte slot (little-endian, so a 4-byte parameter reads the slot's first bytes).
// The struct is pinned for the duration of the call.
type kernelArgs struct {
	slots [maxKernelArgs]uint64
	ptrs  [maxKernelArgs]unsafe.Pointer
	n     int
}

func (a *kernelArgs) reset() *kernelArgs { a.n = 0; return a }

func (a *kernelArgs) put(v uint64) *kernelArgs {
	if a.n == maxKernelArgs {
		panic("cuda: too many kernel arguments")
	}
	a.slots[a.n] = v
	a.n++
	return a
}

// ptr adds a device pointer (T*).
func (a *kernelArgs) ptr(p uintptr) *kernelArgs { return a.put(uint64(p)) }

// i32 adds an int parameter.
func (a *kernelArgs) i32(v int) *kernelArgs { return a.put(uint64(uint32(int32(v)))) }

// f32 adds a float parameter.
func (a *kernelArgs) f32(v float32) *kernelArgs { return a.put(uint64(math.Float32bits(v))) }

// u64 adds an unsigned long long parameter.
func (a *kernelArgs) u64(v uint64) *kernelArgs { return a.put(v) }

// dim3 is a launch geometry.
type dim3 struct{ x, y, z uint32 }

func grid1(n int) dim3 { return dim3{uint32(n), 1, 1} }

// launch enqueues kernel f on stream s with args.
func (d *driver) launch(name string, f uintptr, grid, block dim3, shmem int, s uintptr, a *kernelArgs) error {
	if grid.x == 0 || grid.y == 0 || grid.z == 0 {
		return nil // nothing to do
	}
	var pin runtime.Pinner
	pin.Pin(a)
	for i := 0; i < a.n; i++ {
		a.ptrs[i] = unsafe.Pointer(&a.slots[i])
	}
	r := d.cuLaunchKernel(f, grid.x, grid.y, grid.z, block.x, block.y, block.z, uint32(shmem), s,
		unsafe.Pointer(&a.ptrs[0]), nil)
	pin.Unpin()
	if r != cudaSuccess {
		return fmt.Errorf("launch %s: %w", name, d.check("cuLaunchKernel", r))
	}
	return nil
}
