package attnd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/internal/testutil"
	"github.com/dlmesh/dlmesh/kernels"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"
)

const benchTinyDir = "../models/llada2-tiny-go"

// hopRig is one attnd with its 2 expert groups (experts 0-7 and 8-15, one expertd each) on
// loopback gRPC, and the routed rows of one MoE layer for a batch of blocks.
type hopRig struct {
	s              *Server
	layer          int
	x, ids, w, dst *kernels.Tensor
	reqs           []*pb.ExpertsRequest // what the fan-out sends, for the echo floor
	respBytes      []int
}

func newHopRig(b *testing.B, blocks int) *hopRig {
	b.Helper()
	ctx := context.Background()
	reg := services.NewMemRegistry()
	for i, ids := range [][]int{{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}} {
		e, err := expertd.New(ctx, expertd.Config{ModelDir: benchTinyDir, Experts: ids}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = e.Shutdown(context.Background()) })
		if err := reg.Register(ctx, e.Instance(fmt.Sprintf("e%d", i))); err != nil {
			b.Fatal(err)
		}
	}
	s, err := New(ctx, Config{ModelDir: benchTinyDir}, reg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := s.WaitServing(wctx); err != nil {
		b.Fatal(err)
	}
	// Route random hidden rows with the layer's real router, as a step would.
	m, be := s.m, s.m.Be
	c := m.Cfg
	layer := c.MoELayers()[0]
	T := blocks * 32
	rg := &hopRig{s: s, layer: layer}
	alloc := func(dt kernels.DType, shape ...int) *kernels.Tensor {
		t, err := be.Alloc(dt, shape...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { be.Free(t) })
		return t
	}
	rg.x, rg.dst = alloc(kernels.F32, T, c.Hidden), alloc(kernels.F32, T, c.Hidden)
	rg.ids, rg.w = alloc(kernels.I32, T, c.TopK), alloc(kernels.F32, T, c.TopK)
	logits := alloc(kernels.F32, T, c.Experts)
	ly := m.W.Layers[layer]
	for _, err := range []error{
		be.(kernels.Randomizer).FillRandom(rg.x, 1, 1),
		be.MatMul(logits, rg.x, ly.Gate),
		be.Router(rg.ids, rg.w, logits, ly.Bias, nil, kernels.RouterParams{TopK: c.TopK, NGroup: c.NGroup, TopKGroup: c.TopKGroup, Norm: c.NormTopK, Scale: c.RoutedScale}),
	} {
		if err != nil {
			b.Fatal(err)
		}
	}
	// The requests the fan-out makes, rebuilt here for the echo.
	H, k := c.Hidden, c.TopK
	hx, hid, hw := make([]float32, T*H), make([]int32, T*k), make([]float32, T*k)
	_ = be.Download(hx, rg.x)
	_ = be.Download(hid, rg.ids)
	_ = be.Download(hw, rg.w)
	r := s.routes.Load()
	parts, err := split(hid, hw, k, r.owner, len(r.groups))
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range parts {
		req := &pb.ExpertsRequest{Layer: int32(layer), Rows: int32(len(p.rows)), Hidden: int32(H), TopK: int32(k),
			Ids: wire.AppendI32(nil, p.ids), Weights: wire.AppendF32(nil, p.weights, false)}
		for _, row := range p.rows {
			req.X = wire.AppendF32(req.X, hx[int(row)*H:(int(row)+1)*H], false)
		}
		rg.reqs = append(rg.reqs, req)
		rg.respBytes = append(rg.respBytes, len(p.rows)*H*4)
	}
	return rg
}

// BenchmarkExpertHop measures attnd's fan-out of one MoE layer of the tiny model to its 2 expert
// groups (one expertd each, loopback gRPC) for batches of 1 and 8 blocks of 32 tokens, over the
// groups' ComputeStreams (call=stream, what attnd does) or unary Compute calls (call=unary, its
// fallback): us/layer
// is the whole Dispatch + wait, compute-us the slowest group's compute as expertd reports it,
// overhead-us/layer their difference. echo-us is the floor measured in the same run: the same
// request and response bytes through plain gRPC unary calls (one per group, in parallel) to a
// server that answers at once; mesh-echo-us the same through the mesh's gRPC options;
// stream-echo-us the same over one long-lived ComputeStream per server (the lanes' transport).
func BenchmarkExpertHop(b *testing.B) {
	for _, bc := range []struct {
		blocks int
		unary  bool
	}{{1, false}, {1, true}, {8, false}, {8, true}} {
		transport := "stream"
		if bc.unary {
			transport = "unary"
		}
		b.Run(fmt.Sprintf("blocks=%d/call=%s", bc.blocks, transport), func(b *testing.B) {
			rg := newHopRig(b, bc.blocks)
			rg.s.unaryOnly = bc.unary
			echo, meshEcho := testutil.ExpertEcho(b, rg.reqs, rg.respBytes, false), testutil.ExpertEcho(b, rg.reqs, rg.respBytes, true)
			streamEcho := testutil.ExpertEchoStream(b, rg.reqs, rg.respBytes)
			ctx := context.Background()
			r := rg.s.routes.Load()
			layerOnce := func(f *fanout) {
				wait, err := f.Dispatch(ctx, rg.layer, rg.x, rg.ids, rg.w)
				if err != nil {
					b.Fatal(err)
				}
				if err := wait(rg.dst); err != nil {
					b.Fatal(err)
				}
			}
			for range 20 { // warm up connections and pools
				f := rg.s.newFanout(r)
				layerOnce(f)
				f.release()
				echo()
				meshEcho()
				streamEcho()
			}
			var hopNs, computeNs, echoNs, meshEchoNs, streamEchoNs time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f := rg.s.newFanout(r)
				t0 := time.Now()
				layerOnce(f)
				f.release()
				hopNs += time.Since(t0)
				computeNs += time.Duration(f.lastComputeNs)
				t1 := time.Now()
				echo()
				echoNs += time.Since(t1)
				t2 := time.Now()
				meshEcho()
				meshEchoNs += time.Since(t2)
				t3 := time.Now()
				streamEcho()
				streamEchoNs += time.Since(t3)
			}
			b.StopTimer()
			us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(b.N) }
			b.ReportMetric(us(hopNs), "us/layer")
			b.ReportMetric(us(computeNs), "compute-us")
			b.ReportMetric(us(hopNs-computeNs), "overhead-us/layer")
			b.ReportMetric(us(echoNs), "echo-us")
			b.ReportMetric(us(meshEchoNs), "mesh-echo-us")
			b.ReportMetric(us(streamEchoNs), "stream-echo-us")
			b.ReportMetric(float64(hopNs-computeNs)/float64(max(echoNs, 1)), "overhead/echo")
		})
	}
}
