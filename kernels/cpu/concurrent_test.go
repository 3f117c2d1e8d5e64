package cpu

import (
	"sync"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

func TestDeclaresConcurrent(t *testing.T) {
	if !kernels.IsConcurrent(New()) {
		t.Fatal("the CPU backend does not declare kernels.Concurrent, but it is safe for concurrent use")
	}
}

// TestConcurrentUse runs ops from several goroutines on one Backend, sharing the weights, and
// checks every result equals the serial one bit for bit (the sums do not depend on scheduling).
func TestConcurrentUse(t *testing.T) {
	be := New(WithWorkers(3))
	const T, K, N = 5, 67, 301
	w := tensor(t, be, kernels.BF16, randVec(rng(30), N*K, 1), N, K)
	run := func(seed uint64) ([]float32, []int32) {
		x := tensor(t, be, kernels.F32, randVec(rng(seed), T*K, 1), T, K)
		dst := alloc(t, be, kernels.F32, T, N)
		ids, lg, lse := alloc(t, be, kernels.I32, T, 2), alloc(t, be, kernels.F32, T, 2), alloc(t, be, kernels.F32, T)
		if err := be.MatMul(dst, x, w); err != nil {
			t.Error(err)
		}
		if err := be.LMHead(ids, lg, lse, x, w, 1); err != nil {
			t.Error(err)
		}
		return append(down(t, be, dst), down(t, be, lse)...), downI32(t, be, ids)
	}
	want := make([][]float32, 6)
	wantIDs := make([][]int32, 6)
	for i := range want {
		want[i], wantIDs[i] = run(uint64(i))
	}
	var wg sync.WaitGroup
	for i := range want {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, ids := run(uint64(i))
			if !equalI32(ids, wantIDs[i]) {
				t.Errorf("goroutine %d: ids %v, want %v", i, ids, wantIDs[i])
			}
			for j := range got {
				if got[j] != want[i][j] {
					t.Errorf("goroutine %d: value %d = %v, want %v", i, j, got[j], want[i][j])
					return
				}
			}
		}()
	}
	wg.Wait()
	// A different worker count gives the same bits.
	serial := New(WithWorkers(1))
	x := tensor(t, serial, kernels.F32, randVec(rng(0), T*K, 1), T, K)
	dst := alloc(t, serial, kernels.F32, T, N)
	if err := serial.MatMul(dst, x, w); err != nil {
		t.Fatal(err)
	}
	for j, v := range down(t, serial, dst) {
		if v != want[0][j] {
			t.Fatalf("workers=1 value %d = %v, workers=3 %v", j, v, want[0][j])
		}
	}
}
