package attnd

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/services"
)

// stagingCPU is the CPU backend with a kernels.Stager over ordinary memory that counts what the
// hop uses, standing in for the CUDA backend's pinned path (its driver calls are tested over the
// fake driver in kernels/cuda).
type stagingCPU struct {
	*cpu.Backend
	mu                        sync.Mutex
	pinned                    map[*byte]int
	allocs, frees             int
	downAsync, upAsync, syncs int
	plainDown, plainUp        int
}

func (s *stagingCPU) AllocPinned(n int) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := make([]byte, n)
	s.pinned[&b[0]] = n
	s.allocs++
	return b, nil
}

func (s *stagingCPU) FreePinned(p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pinned, &p[0])
	s.frees++
	return nil
}

// view is h as the host type of t's dtype.
func view(h []byte, t *kernels.Tensor) any {
	if t.DType == kernels.I32 {
		return unsafe.Slice((*int32)(unsafe.Pointer(&h[0])), len(h)/4)
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&h[0])), len(h)/4)
}

func (s *stagingCPU) DownloadAsync(dst []byte, t *kernels.Tensor) error {
	s.mu.Lock()
	s.downAsync++
	s.mu.Unlock()
	return s.Backend.Download(view(dst, t), t)
}

func (s *stagingCPU) UploadAsync(t *kernels.Tensor, src []byte) error {
	s.mu.Lock()
	s.upAsync++
	s.mu.Unlock()
	return s.Backend.Upload(t, view(src, t))
}

func (s *stagingCPU) Sync() error {
	s.mu.Lock()
	s.syncs++
	s.mu.Unlock()
	return s.Backend.Sync()
}

func (s *stagingCPU) Download(dst any, t *kernels.Tensor) error {
	s.mu.Lock()
	s.plainDown++
	s.mu.Unlock()
	return s.Backend.Download(dst, t)
}

func (s *stagingCPU) Upload(t *kernels.Tensor, src any) error {
	s.mu.Lock()
	s.plainUp++
	s.mu.Unlock()
	return s.Backend.Upload(t, src)
}

var _ kernels.Stager = (*stagingCPU)(nil)

// TestStagedHop: on a backend with a Stager the fan-out moves the routed rows and the sums only
// through pinned buffers with async copies and one Sync per layer, reuses one pinned buffer
// over the layers, gives results identical to the plain path's, and frees it at Shutdown.
func TestStagedHop(t *testing.T) {
	ctx := context.Background()
	reg := services.NewMemRegistry()
	for i, ids := range [][]int{{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}} {
		e, err := expertd.New(ctx, expertd.Config{ModelDir: benchTinyDir, Experts: ids}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
		if err := reg.Register(ctx, e.Instance(string(rune('a'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	sb := &stagingCPU{Backend: cpu.New(), pinned: map[*byte]int{}}
	s, err := New(ctx, Config{ModelDir: benchTinyDir, NewBackend: func() (kernels.Backend, error) { return sb, nil }}, reg)
	if err != nil {
		t.Fatal(err)
	}
	shut := false
	t.Cleanup(func() {
		if !shut {
			_ = s.Shutdown(context.Background())
		}
	})
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := s.WaitServing(wctx); err != nil {
		t.Fatal(err)
	}
	c := s.m.Cfg
	const T = 40
	alloc := func(dt kernels.DType, shape ...int) *kernels.Tensor {
		x, err := sb.Alloc(dt, shape...)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	x, ids, w, logits := alloc(kernels.F32, T, c.Hidden), alloc(kernels.I32, T, c.TopK), alloc(kernels.F32, T, c.TopK), alloc(kernels.F32, T, c.Experts)
	r := s.routes.Load()
	f := s.newFanout(r)
	var staged [][]float32
	sb.mu.Lock()
	sb.plainDown, sb.plainUp, sb.syncs, sb.downAsync, sb.upAsync = 0, 0, 0, 0, 0
	sb.mu.Unlock()
	layers := c.MoELayers()
	for n, layer := range layers {
		ly := s.m.W.Layers[layer]
		for _, err := range []error{
			sb.FillRandom(x, uint64(n+1), 1),
			sb.MatMul(logits, x, ly.Gate),
			sb.Router(ids, w, logits, ly.Bias, nil, kernels.RouterParams{TopK: c.TopK, NGroup: c.NGroup, TopKGroup: c.TopKGroup, Norm: c.NormTopK, Scale: c.RoutedScale}),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		dst := alloc(kernels.F32, T, c.Hidden)
		wait, err := f.Dispatch(ctx, layer, x, ids, w)
		if err != nil {
			t.Fatal(err)
		}
		if err := wait(dst); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, T*c.Hidden)
		if err := sb.Backend.Download(got, dst); err != nil {
			t.Fatal(err)
		}
		staged = append(staged, got)
		// the same layer through the plain path (a backend without Stager)
		plain := &fanout{s: s, r: r, be: sb.Backend, buf: &hopBuf{}, lanes: make([]*lane, len(r.groups))}
		wait, err = plain.Dispatch(ctx, layer, x, ids, w)
		if err != nil {
			t.Fatal(err)
		}
		if err := wait(dst); err != nil {
			t.Fatal(err)
		}
		plain.release()
		want := make([]float32, T*c.Hidden)
		if err := sb.Backend.Download(want, dst); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("layer %d: the staged hop's sums differ from the plain path's", layer)
		}
	}
	f.release()
	sb.mu.Lock()
	if L := len(layers); sb.plainDown != 0 || sb.plainUp != 0 || sb.downAsync != 3*L || sb.upAsync != L || sb.syncs != L {
		t.Errorf("over %d layers: %d plain downloads, %d plain uploads, %d async downloads, %d async uploads, %d syncs; want 0, 0, %d, %d, %d",
			L, sb.plainDown, sb.plainUp, sb.downAsync, sb.upAsync, sb.syncs, 3*L, L, L)
	}
	if sb.allocs != 1 {
		t.Errorf("%d pinned allocations over %d layers, want 1", sb.allocs, len(layers))
	}
	sb.mu.Unlock()
	if slices.Equal(staged[0], staged[1]) {
		t.Error("two layers gave the same sums: the test routes nothing")
	}
	shut = true
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if len(sb.pinned) != 0 {
		t.Errorf("%d pinned buffers left after Shutdown", len(sb.pinned))
	}
}
