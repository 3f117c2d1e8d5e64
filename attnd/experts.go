package attnd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"
)

// fanout is the remote model.ExpertRunner of one step: it sends each MoE layer's routed rows to
// the expert groups of a routes snapshot.
type fanout struct {
	s         *Server
	r         *routes
	be        kernels.Backend
	lock      sync.Locker // held around the backend's use by this micro-batch (nil: none); released while waiting
	expertsNs int64       // time spent in Dispatch and wait, summed over the layers
}

var _ model.ExpertRunner = (*fanout)(nil)

// Dispatch implements model.ExpertRunner: download x, ids and weights once, split the rows by
// group and call every group in parallel; wait sums the answers into dst.
func (f *fanout) Dispatch(ctx context.Context, layer int, x, ids, weights *kernels.Tensor) (func(*kernels.Tensor) error, error) {
	t0 := time.Now()
	T, H, k := x.Rows(), x.Cols(), ids.Cols()
	hx := make([]float32, T*H)
	hid := make([]int32, T*k)
	hw := make([]float32, T*k)
	for _, d := range []struct {
		dst any
		t   *kernels.Tensor
	}{{hx, x}, {hid, ids}, {hw, weights}} {
		if err := f.be.Download(d.dst, d.t); err != nil {
			return nil, fmt.Errorf("attnd: download routed rows: %w", err)
		}
	}
	parts, err := split(hid, hw, k, f.r.owner, len(f.r.groups))
	if err != nil {
		return nil, err
	}
	rows := 0
	for _, p := range parts {
		rows += len(p.rows)
	}
	ctx, span := f.s.tracer.Start(ctx, "attnd.experts", trace.WithAttributes(
		attribute.Int("layer", layer), attribute.Int("groups", len(parts)), attribute.Int("rows", rows)))
	bf16 := f.s.cfg.WireBF16
	dtype := pb.DType_DTYPE_F32
	if bf16 {
		dtype = pb.DType_DTYPE_BF16
	}
	ys := make([][]float32, len(parts))
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		req := &pb.ExpertsRequest{Layer: int32(layer), Rows: int32(len(p.rows)), Hidden: int32(H), TopK: int32(k), Dtype: dtype,
			Ids: wire.AppendI32(nil, p.ids), Weights: wire.AppendF32(nil, p.weights, false)}
		size := 4
		if bf16 {
			size = 2
		}
		req.X = make([]byte, 0, len(p.rows)*H*size)
		for _, r := range p.rows {
			req.X = wire.AppendF32(req.X, hx[int(r)*H:(int(r)+1)*H], bf16)
		}
		g := f.r.groups[p.group]
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := f.s.callGroup(ctx, g, req)
			if err == nil {
				y := make([]float32, len(p.rows)*H)
				if err = wire.DecodeF32(y, resp.GetY(), resp.GetDtype() == pb.DType_DTYPE_BF16); err == nil {
					ys[i] = y
				}
			}
			if err != nil {
				errs[i] = fmt.Errorf("attnd: layer %d expert group %s: %w", layer, g.key, err)
			}
		}()
	}
	f.expertsNs += time.Since(t0).Nanoseconds()
	return func(dst *kernels.Tensor) error {
		t1 := time.Now()
		defer func() { f.expertsNs += time.Since(t1).Nanoseconds() }()
		if f.lock != nil { // let another micro-batch use the backend meanwhile
			f.lock.Unlock()
			wg.Wait()
			f.lock.Lock()
		} else {
			wg.Wait()
		}
		defer span.End()
		if err := errors.Join(errs...); err != nil {
			span.SetStatus(codes.Error, err.Error())
			return err
		}
		// y[t] = Σ_g y_g[t], summed in group order.
		out := make([]float32, T*H)
		for i, p := range parts {
			y := ys[i]
			for j, r := range p.rows {
				o := out[int(r)*H : (int(r)+1)*H]
				for c, v := range y[j*H : (j+1)*H] {
					o[c] += v
				}
			}
		}
		return f.be.Upload(dst, out)
	}, nil
}

// callGroup calls Compute on a replica of g through services.Hedge: on failure of that replica,
// or when it has not answered within the pool's hedge delay (a multiple of the group's observed
// p99), once more on another replica of g (Compute is idempotent); a replica left with a call
// stuck past the delay is passed over until that call ends. Every call has the ExpertTimeout
// deadline and goes through the replica's breaker.
func (s *Server) callGroup(ctx context.Context, g *group, req *pb.ExpertsRequest) (*pb.ExpertsResponse, error) {
	return services.Hedge(ctx, g.pool, s.cfg.ExpertTimeout, func(ctx context.Context, r *services.Replica) (*pb.ExpertsResponse, error) {
		return pb.NewExpertsClient(r.Conn()).Compute(ctx, req)
	})
}
