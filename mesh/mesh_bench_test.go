package mesh_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/internal/fixtures"
)

// tally sums what a workload produced.
type tally struct {
	mu       sync.Mutex
	tokens   int
	forwards int
	stepTime time.Duration // Σ over requests of their steps' wall time
	wall     time.Duration
}

func (t *tally) add(tokens, forwards int, stepTime time.Duration) {
	t.mu.Lock()
	t.tokens += tokens
	t.forwards += forwards
	t.stepTime += stepTime
	t.mu.Unlock()
}

func (t *tally) tokPerS() float64 { return float64(t.tokens) / t.wall.Seconds() }

// msPerStep is the mean wall time of one batched step as a request saw it.
func (t *tally) msPerStep() float64 {
	return float64(t.stepTime.Microseconds()) / 1000 / float64(t.forwards)
}

// run runs fn for each of n workers and adds the wall time.
func (t *tally) run(n int, fn func(i int)) {
	t0 := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(i)
		}()
	}
	wg.Wait()
	t.wall += time.Since(t0)
}

// BenchmarkMeshVsEngine generates the first eight fixture cases through the in-process engine and
// through the embedded mesh (gateway → attnd → 2 expertd over loopback gRPC), with 1 stream (the
// cases one after another) and 8 concurrent streams. It reports both throughputs, their ratio,
// the mean step time of each and the per-step cost of the network hops (mesh − engine).
func BenchmarkMeshVsEngine(b *testing.B) {
	f := fixtures.LoadGen(b)
	cases := f.Cases[:8]
	eng, _ := localEngine(b)
	ms := sharedMesh(b)
	c := dialGateway(b, ms)

	for _, streams := range []int{1, 8} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			var local, remote tally
			for i := 0; i < b.N; i++ {
				local.run(streams, func(w int) {
					for j := w; j < len(cases); j += streams {
						gc := cases[j]
						p, _ := diffusion.Preset(gc.Mode)
						p.GenLen, p.BlockLen = gc.GenLength, gc.BlockLength
						r, err := eng.Generate(context.Background(), engine.Request{ID: "bench", Prompt: gc.PromptIDs, Params: p}, nil)
						if err != nil {
							b.Error(err)
							return
						}
						local.add(len(r.IDs), r.Forwards, r.StepTime)
					}
				})
				remote.run(streams, func(w int) {
					for j := w; j < len(cases); j += streams {
						s, err := generate(context.Background(), c, request(cases[j], "bench"))
						if err != nil {
							b.Error(err)
							return
						}
						u := s.final.GetUsage()
						stepTime := time.Duration(u.GetMsPerStep() * float64(u.GetForwards()) * float64(time.Millisecond))
						remote.add(len(s.final.GetTokenIds()), int(u.GetForwards()), stepTime)
					}
				})
			}
			if local.tokens != remote.tokens || local.forwards != remote.forwards {
				b.Errorf("engine made %d tokens in %d forwards, mesh %d in %d", local.tokens, local.forwards, remote.tokens, remote.forwards)
			}
			b.ReportMetric(local.tokPerS(), "engine-tok/s")
			b.ReportMetric(remote.tokPerS(), "mesh-tok/s")
			b.ReportMetric(remote.tokPerS()/local.tokPerS(), "mesh/engine")
			b.ReportMetric(local.msPerStep(), "engine-ms/step")
			b.ReportMetric(remote.msPerStep(), "mesh-ms/step")
			b.ReportMetric(remote.msPerStep()-local.msPerStep(), "hop-ms/step")
			b.ReportMetric(0, "ns/op") // the workload is fixed; ns/op would count both engines
		})
	}
}
