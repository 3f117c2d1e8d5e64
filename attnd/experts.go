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

// callGroup calls Compute on a replica of g, and on failure of that replica once more on another
// replica of g (Compute is idempotent). Every call has the ExpertTimeout deadline and goes
// through the replica's breaker.
func (s *Server) callGroup(ctx context.Context, g *group, req *pb.ExpertsRequest) (*pb.ExpertsResponse, error) {
	var (
		failed  *services.Replica
		lastErr error
	)
	for attempt := 0; attempt < 2; attempt++ {
		r, done, err := pickOther(g.pool, failed)
		if err != nil {
			if lastErr != nil {
				return nil, fmt.Errorf("%w (no other replica to retry on: %v)", lastErr, err)
			}
			return nil, err
		}
		var resp *pb.ExpertsResponse
		err = r.Breaker().Do(ctx, func(ctx context.Context) error {
			cctx, cancel := context.WithTimeout(ctx, s.cfg.ExpertTimeout)
			defer cancel()
			var err error
			resp, err = pb.NewExpertsClient(r.Conn()).Compute(cctx, req)
			return err
		})
		done()
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !services.IsInstanceFailure(err) && !errors.Is(err, services.ErrBreakerOpen) {
			return nil, err // the replica answered: retrying elsewhere gives the same answer
		}
		lastErr = fmt.Errorf("replica %s: %w", r.Instance().ID, err)
		failed = r
	}
	return nil, lastErr
}

// pickOther picks a replica of p other than avoid (nil: any). The replicas picked and passed over
// stay reserved until the choice is made, so least-outstanding moves on to the next one; under
// concurrent calls the others may hold more reservations than avoid, so avoid can be picked
// several times before another replica has the fewest.
func pickOther(p *services.Pool, avoid *services.Replica) (*services.Replica, func(), error) {
	var held []func()
	defer func() {
		for _, d := range held {
			d()
		}
	}()
	for range 8*max(p.Len(), 1) + 64 {
		r, done, err := p.Pick()
		if err != nil {
			return nil, nil, err
		}
		if r != avoid {
			return r, done, nil
		}
		held = append(held, done)
	}
	return nil, nil, fmt.Errorf("attnd: pool has no replica but the failed one: %w", services.ErrNoReplica)
}
