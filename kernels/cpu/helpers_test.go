package cpu

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"go.uber.org/goleak"

	"github.com/dlmesh/dlmesh/kernels"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backends are the configurations every op test runs on: serial and with more workers than
// cores (to shake out races in the task split).
func backends() map[string]*Backend {
	return map[string]*Backend{"workers=1": New(WithWorkers(1)), "workers=5": New(WithWorkers(5))}
}

func rng(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 7)) }

func randVec(r *rand.Rand, n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = (r.Float32()*2 - 1) * scale
	}
	return v
}

// roundTo rounds v to what dtype dt can hold (so the float64 reference sees the same weights).
func roundTo(dt kernels.DType, v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		switch dt {
		case kernels.BF16:
			out[i] = kernels.BF16ToF32(kernels.F32ToBF16(x))
		case kernels.F16:
			out[i] = kernels.F16ToF32(f32ToF16(x))
		default:
			out[i] = x
		}
	}
	return out
}

// tensor makes a tensor of dt from float32 values (rounded for BF16/F16) via Load (weights)
// or Alloc+Upload (activations).
func tensor(tb testing.TB, be *Backend, dt kernels.DType, data []float32, shape ...int) *kernels.Tensor {
	tb.Helper()
	switch dt {
	case kernels.F32:
		t, err := be.Alloc(dt, shape...)
		if err != nil {
			tb.Fatal(err)
		}
		if err := be.Upload(t, data); err != nil {
			tb.Fatal(err)
		}
		return t
	case kernels.BF16, kernels.F16:
		raw := make([]byte, 2*len(data))
		for i, x := range data {
			u := kernels.F32ToBF16(x)
			if dt == kernels.F16 {
				u = f32ToF16(x)
			}
			binary.LittleEndian.PutUint16(raw[2*i:], u)
		}
		t, err := be.Load(dt, shape, raw)
		if err != nil {
			tb.Fatal(err)
		}
		return t
	}
	tb.Fatalf("tensor: dtype %v", dt)
	return nil
}

func i32Tensor(tb testing.TB, be *Backend, data []int32, shape ...int) *kernels.Tensor {
	tb.Helper()
	t, err := be.Alloc(kernels.I32, shape...)
	if err != nil {
		tb.Fatal(err)
	}
	if err := be.Upload(t, data); err != nil {
		tb.Fatal(err)
	}
	return t
}

func alloc(tb testing.TB, be *Backend, dt kernels.DType, shape ...int) *kernels.Tensor {
	tb.Helper()
	t, err := be.Alloc(dt, shape...)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

func down(tb testing.TB, be *Backend, t *kernels.Tensor) []float32 {
	tb.Helper()
	v := make([]float32, t.Numel())
	if err := be.Download(v, t); err != nil {
		tb.Fatal(err)
	}
	return v
}

func downI32(tb testing.TB, be *Backend, t *kernels.Tensor) []int32 {
	tb.Helper()
	v := make([]int32, t.Numel())
	if err := be.Download(v, t); err != nil {
		tb.Fatal(err)
	}
	return v
}

// near fails when got and want differ by more than atol + rtol·|want| anywhere.
func near(tb testing.TB, what string, got []float32, want []float64, atol, rtol float64) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		d := math.Abs(float64(got[i]) - want[i])
		if !(d <= atol+rtol*math.Abs(want[i])) {
			tb.Fatalf("%s[%d] = %v, want %v (diff %g)", what, i, got[i], want[i], d)
		}
	}
}

func f64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}
