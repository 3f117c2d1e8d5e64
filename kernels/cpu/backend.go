package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"unsafe"

	"github.com/dlmesh/dlmesh/kernels"
)

// Backend is the host backend. The zero value is not usable; call New.
type Backend struct {
	workers int
	scratch sync.Pool // *[]float32 buffers reused by the ops' workers
}

var (
	_ kernels.Backend    = (*Backend)(nil)
	_ kernels.Randomizer = (*Backend)(nil)
)

// Option configures a Backend.
type Option func(*Backend)

// WithWorkers sets how many goroutines an op may use (default runtime.GOMAXPROCS(0)); n < 1
// means 1.
func WithWorkers(n int) Option {
	return func(b *Backend) { b.workers = max(n, 1) }
}

// New returns a CPU backend.
func New(opts ...Option) *Backend {
	b := &Backend{workers: runtime.GOMAXPROCS(0)}
	for _, o := range opts {
		o(b)
	}
	b.workers = max(b.workers, 1)
	return b
}

// NewBackend is New with the default options as a backend factory: the default of the
// services' NewBackend knobs (attnd.Config, expertd.Config).
func NewBackend() (kernels.Backend, error) { return New(), nil }

// Workers is the number of goroutines an op may use.
func (b *Backend) Workers() int { return b.workers }

// store is the backend-private storage of a Tensor. Exactly one of f32, i32, raw is used,
// according to the tensor's dtype (raw for BF16/F16, little-endian bytes).
type store struct {
	f32      []float32
	i32      []int32
	raw      []byte
	readOnly bool // aliases memory handed to Load: never written
	freed    bool
}

// Name implements kernels.Backend.
func (b *Backend) Name() string { return "cpu" }

// Concurrent implements kernels.Concurrent: ops are synchronous and keep no state between calls,
// so several goroutines may use one Backend at once on different tensors.
func (b *Backend) Concurrent() bool { return true }

// Sync implements kernels.Backend: every op runs to completion before it returns.
func (b *Backend) Sync() error { return nil }

// Close implements kernels.Backend. Tensors are garbage collected; nothing else is held.
func (b *Backend) Close() error { return nil }

func checkDims(op string, dt kernels.DType, shape []int) (int, error) {
	if dt.Size() == 0 {
		return 0, fmt.Errorf("%s: dtype %v: %w", op, dt, kernels.ErrDType)
	}
	n := 1
	for _, s := range shape {
		if s < 0 {
			return 0, fmt.Errorf("%s: negative dimension in shape %v: %w", op, shape, kernels.ErrShape)
		}
		if s > 0 && n > math.MaxInt/8/s {
			return 0, fmt.Errorf("%s: shape %v too large: %w", op, shape, kernels.ErrShape)
		}
		n *= s
	}
	return n, nil
}

// Alloc implements kernels.Backend.
func (b *Backend) Alloc(dt kernels.DType, shape ...int) (*kernels.Tensor, error) {
	n, err := checkDims("cpu: alloc", dt, shape)
	if err != nil {
		return nil, err
	}
	s := &store{}
	switch dt {
	case kernels.F32:
		s.f32 = make([]float32, n)
	case kernels.I32:
		s.i32 = make([]int32, n)
	default:
		s.raw = make([]byte, n*dt.Size())
	}
	return &kernels.Tensor{DType: dt, Shape: append([]int(nil), shape...), Storage: s}, nil
}

// Load implements kernels.Backend. BF16/F16 data is aliased (never written); F32/I32 data is
// aliased when it is 4-byte aligned and copied otherwise. A tensor that aliases raw is read-only:
// using it as an op's destination or Upload target is an error.
func (b *Backend) Load(dt kernels.DType, shape []int, raw []byte) (*kernels.Tensor, error) {
	n, err := checkDims("cpu: load", dt, shape)
	if err != nil {
		return nil, err
	}
	if len(raw) != n*dt.Size() {
		return nil, fmt.Errorf("cpu: load: %d bytes for %v%v, want %d: %w", len(raw), dt, shape, n*dt.Size(), kernels.ErrShape)
	}
	s := &store{readOnly: true}
	aligned := n > 0 && uintptr(unsafe.Pointer(&raw[0]))%4 == 0
	switch dt {
	case kernels.F32:
		if aligned {
			s.f32 = unsafe.Slice((*float32)(unsafe.Pointer(&raw[0])), n)
		} else {
			s.f32, s.readOnly = make([]float32, n), false
			for i := range s.f32 {
				s.f32[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			}
		}
	case kernels.I32:
		if aligned {
			s.i32 = unsafe.Slice((*int32)(unsafe.Pointer(&raw[0])), n)
		} else {
			s.i32, s.readOnly = make([]int32, n), false
			for i := range s.i32 {
				s.i32[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
			}
		}
	default:
		s.raw = raw
	}
	return &kernels.Tensor{DType: dt, Shape: append([]int(nil), shape...), Storage: s}, nil
}

// Free implements kernels.Backend. Tensors of other backends and nil are ignored.
func (b *Backend) Free(t *kernels.Tensor) {
	if t == nil {
		return
	}
	if s, ok := t.Storage.(*store); ok {
		*s = store{freed: true}
	}
}

// Upload implements kernels.Backend.
func (b *Backend) Upload(t *kernels.Tensor, src any) error {
	const op = "cpu: upload"
	s, err := b.storeOf(op, "t", t)
	if err != nil {
		return err
	}
	if s.readOnly {
		return fmt.Errorf("%s: t is read-only (loaded from caller memory): %w", op, kernels.ErrUnsupported)
	}
	n := t.Numel()
	switch v := src.(type) {
	case []float32:
		if t.DType != kernels.F32 {
			return fmt.Errorf("%s: []float32 into %v: %w", op, t.DType, kernels.ErrDType)
		}
		if len(v) != n {
			return fmt.Errorf("%s: %d values into %v: %w", op, len(v), t, kernels.ErrShape)
		}
		copy(s.f32, v)
	case []int32:
		if t.DType != kernels.I32 {
			return fmt.Errorf("%s: []int32 into %v: %w", op, t.DType, kernels.ErrDType)
		}
		if len(v) != n {
			return fmt.Errorf("%s: %d values into %v: %w", op, len(v), t, kernels.ErrShape)
		}
		copy(s.i32, v)
	case []uint16:
		if t.DType != kernels.BF16 && t.DType != kernels.F16 {
			return fmt.Errorf("%s: []uint16 into %v: %w", op, t.DType, kernels.ErrDType)
		}
		if len(v) != n {
			return fmt.Errorf("%s: %d values into %v: %w", op, len(v), t, kernels.ErrShape)
		}
		for i, u := range v {
			binary.LittleEndian.PutUint16(s.raw[2*i:], u)
		}
	default:
		return fmt.Errorf("%s: source type %T: %w", op, src, kernels.ErrDType)
	}
	return nil
}

// Download implements kernels.Backend.
func (b *Backend) Download(dst any, t *kernels.Tensor) error {
	const op = "cpu: download"
	s, err := b.storeOf(op, "t", t)
	if err != nil {
		return err
	}
	n := t.Numel()
	switch v := dst.(type) {
	case []float32:
		if t.DType != kernels.F32 {
			return fmt.Errorf("%s: %v into []float32: %w", op, t.DType, kernels.ErrDType)
		}
		if len(v) != n {
			return fmt.Errorf("%s: %v into %d values: %w", op, t, len(v), kernels.ErrShape)
		}
		copy(v, s.f32)
	case []int32:
		if t.DType != kernels.I32 {
			return fmt.Errorf("%s: %v into []int32: %w", op, t.DType, kernels.ErrDType)
		}
		if len(v) != n {
			return fmt.Errorf("%s: %v into %d values: %w", op, t, len(v), kernels.ErrShape)
		}
		copy(v, s.i32)
	case []uint16:
		if t.DType != kernels.BF16 && t.DType != kernels.F16 {
			return fmt.Errorf("%s: %v into []uint16: %w", op, t.DType, kernels.ErrDType)
		}
		if len(v) != n {
			return fmt.Errorf("%s: %v into %d values: %w", op, t, len(v), kernels.ErrShape)
		}
		for i := range v {
			v[i] = binary.LittleEndian.Uint16(s.raw[2*i:])
		}
	default:
		return fmt.Errorf("%s: destination type %T: %w", op, dst, kernels.ErrDType)
	}
	return nil
}

// FillRandom implements kernels.Randomizer: uniform values in [-scale, scale) (integers in
// [0, scale)) from seed.
func (b *Backend) FillRandom(t *kernels.Tensor, seed uint64, scale float32) error {
	const op = "cpu: fill random"
	s, err := b.storeOf(op, "t", t)
	if err != nil {
		return err
	}
	if s.readOnly {
		return fmt.Errorf("%s: t is read-only (loaded from caller memory): %w", op, kernels.ErrUnsupported)
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	uni := func() float32 { return (rng.Float32()*2 - 1) * scale }
	switch t.DType {
	case kernels.F32:
		for i := range s.f32 {
			s.f32[i] = uni()
		}
	case kernels.I32:
		hi := int64(scale)
		for i := range s.i32 {
			if hi > 0 {
				s.i32[i] = int32(rng.Int64N(hi))
			} else {
				s.i32[i] = 0
			}
		}
	case kernels.BF16:
		for i := 0; i < len(s.raw); i += 2 {
			binary.LittleEndian.PutUint16(s.raw[i:], kernels.F32ToBF16(uni()))
		}
	case kernels.F16:
		for i := 0; i < len(s.raw); i += 2 {
			binary.LittleEndian.PutUint16(s.raw[i:], f32ToF16(uni()))
		}
	}
	return nil
}

// f32ToF16 rounds a float32 to the nearest IEEE half (ties to even); used by FillRandom only.
func f32ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	a := math.Abs(float64(f))
	switch {
	case math.IsNaN(float64(f)):
		return sign | 0x7e00
	case a >= 65520:
		return sign | 0x7c00
	case a < 6.103515625e-05: // subnormal: multiples of 2^-24
		return sign | uint16(math.RoundToEven(a*(1<<24)))
	}
	e := math.Floor(math.Log2(a))
	m := math.RoundToEven((a/math.Exp2(e) - 1) * 1024)
	if m == 1024 {
		m, e = 0, e+1
	}
	return sign | uint16(e+15)<<10 | uint16(m)
}

// storeOf returns t's storage, or ErrShape (nil), ErrWrongOwner or ErrFreed naming op and arg.
func (b *Backend) storeOf(op, arg string, t *kernels.Tensor) (*store, error) {
	if t == nil {
		return nil, fmt.Errorf("%s: %s is nil: %w", op, arg, kernels.ErrShape)
	}
	s, ok := t.Storage.(*store)
	if !ok || s == nil {
		return nil, fmt.Errorf("%s: %s (%T storage): %w", op, arg, t.Storage, kernels.ErrWrongOwner)
	}
	if s.freed {
		return nil, fmt.Errorf("%s: %s: %w", op, arg, kernels.ErrFreed)
	}
	n := 1
	for _, d := range t.Shape {
		if d < 0 {
			return nil, fmt.Errorf("%s: %s has shape %v: %w", op, arg, t.Shape, kernels.ErrShape)
		}
		n *= d
	}
	var have int
	switch t.DType {
	case kernels.F32:
		have = len(s.f32)
	case kernels.I32:
		have = len(s.i32)
	case kernels.BF16, kernels.F16:
		have = len(s.raw) / 2
	default:
		return nil, fmt.Errorf("%s: %s is %v: %w", op, arg, t.DType, kernels.ErrDType)
	}
	if have != n {
		return nil, fmt.Errorf("%s: %s shape %v does not match its %d stored elements: %w", op, arg, t.Shape, have, kernels.ErrShape)
	}
	return s, nil
}

// f32 returns the data of an F32 tensor.
func (b *Backend) f32(op, arg string, t *kernels.Tensor) ([]float32, error) {
	if err := kernels.CheckDType(op, arg, t, kernels.F32); err != nil {
		return nil, err
	}
	s, err := b.storeOf(op, arg, t)
	if err != nil {
		return nil, err
	}
	return s.f32, nil
}

// f32w is f32 for a tensor the op writes.
func (b *Backend) f32w(op, arg string, t *kernels.Tensor) ([]float32, error) {
	d, err := b.f32(op, arg, t)
	if err != nil {
		return nil, err
	}
	if t.Storage.(*store).readOnly {
		return nil, fmt.Errorf("%s: %s is read-only (loaded from caller memory): %w", op, arg, kernels.ErrUnsupported)
	}
	return d, nil
}

// i32 returns the data of an I32 tensor.
func (b *Backend) i32(op, arg string, t *kernels.Tensor) ([]int32, error) {
	if err := kernels.CheckDType(op, arg, t, kernels.I32); err != nil {
		return nil, err
	}
	s, err := b.storeOf(op, arg, t)
	if err != nil {
		return nil, err
	}
	return s.i32, nil
}

// i32w is i32 for a tensor the op writes.
func (b *Backend) i32w(op, arg string, t *kernels.Tensor) ([]int32, error) {
	d, err := b.i32(op, arg, t)
	if err != nil {
		return nil, err
	}
	if t.Storage.(*store).readOnly {
		return nil, fmt.Errorf("%s: %s is read-only (loaded from caller memory): %w", op, arg, kernels.ErrUnsupported)
	}
	return d, nil
}
