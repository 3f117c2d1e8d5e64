package mesh_test

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/internal/testutil"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// tally sums what a workload produced.
type tally struct {
	mu       sync.Mutex
	tokens   int
	forwards int
	stepTime time.Duration // Σ over requests of their steps' wall time
	wall     time.Duration
	cpu      time.Duration // the process's CPU time (user + system) over the runs
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

// cores is the mean number of cores the process kept busy during the runs.
func (t *tally) cores() float64 { return t.cpu.Seconds() / t.wall.Seconds() }

// processCPU is the CPU time (user + system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// run runs fn for each of n workers and adds the wall time and the process's CPU time.
func (t *tally) run(n int, fn func(i int)) {
	c0 := processCPU()
	defer func() { t.cpu += processCPU() - c0 }()
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

// hopFloorMs is the floor of the expert hops of one step of the tiny model in the embedded
// mesh, measured now: every MoE layer's calls (both groups in parallel, the mesh's gRPC
// options) as a loopback echo of the same request and response bytes, for the rows of one
// micro-batch (a block per stream, the streams split in attnd's default micro-batches), as
// unary calls and over long-lived streams (what attnd's lanes use). The groups' compute, which
// the engine also does, is left out, so engine-ms/step over itself plus the stream echo is the
// best mesh/engine the hops allow on this machine (floor-ratio), whatever attnd does.
func hopFloorMs(b *testing.B, streams int) (unaryMs, streamMs float64) {
	b.Helper()
	c, err := model.LoadConfig(tinyDir)
	if err != nil {
		b.Fatal(err)
	}
	rows := 32 * ((streams + attnd.DefaultMicroBatches - 1) / attnd.DefaultMicroBatches)
	var reqs []*pb.ExpertsRequest
	var resp []int
	for range 2 { // a row goes to each group holding one of its choices: nearly always both
		reqs = append(reqs, &pb.ExpertsRequest{Rows: int32(rows), Hidden: int32(c.Hidden), TopK: int32(c.TopK),
			X: make([]byte, 4*rows*c.Hidden), Ids: make([]byte, 4*rows*c.TopK), Weights: make([]byte, 4*rows*c.TopK)})
		resp = append(resp, 4*rows*c.Hidden)
	}
	perLayer := func(layer func()) time.Duration {
		for range 20 {
			layer()
		}
		const n = 200
		t0 := time.Now()
		for range n {
			layer()
		}
		return time.Since(t0) / n
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 * float64(len(c.MoELayers())) }
	return ms(perLayer(testutil.ExpertEcho(b, reqs, resp, true))), ms(perLayer(testutil.ExpertEchoStream(b, reqs, resp)))
}

// BenchmarkMeshVsEngine generates the first eight fixture cases through the in-process engine and
// through the embedded mesh (gateway → attnd → 2 expertd over loopback gRPC), with 1 stream (the
// cases one after another) and 8 concurrent streams. It reports both throughputs, their ratio,
// the mean step time of each and the per-step cost of the network hops (mesh − engine), and in
// the same run the hops' floor (hopFloorMs: echo-ms/step, floor-ratio) and the cores each kept
// busy (the embedded mesh runs every service in this process, so its CPU time is the mesh's):
// the experts can only work beside attnd on cores the engine left idle, so mesh/engine cannot
// pass runtime.NumCPU() / engine-cores, and is below 1 where the engine already fills the cores.
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
			b.ReportMetric(local.cores(), "engine-cores")
			b.ReportMetric(remote.cores(), "mesh-cores")
			echoMs, streamEchoMs := hopFloorMs(b, streams)
			b.ReportMetric(echoMs, "echo-ms/step")
			b.ReportMetric(streamEchoMs, "stream-echo-ms/step")
			b.ReportMetric(local.msPerStep()/(local.msPerStep()+streamEchoMs), "floor-ratio")
			b.ReportMetric(0, "ns/op") // the workload is fixed; ns/op would count both engines
		})
	}
}
