package expertd

import (
	"context"
	"errors"
	"io"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// ComputeStream implements pb.ExpertsServer: Compute for every request of a long-lived stream,
// answered in order, with the host and backend buffers kept from one request to the next. A
// request Compute would refuse ends the stream with that error. The compute span is started
// only for a request that carries a traceparent (the caller's trace is sampled), as its child.
//
// The requests are served by a goroutine of the stream's own (Recv, compute, Send: nothing is
// handed between goroutines per request); the handler waits for it, or for Shutdown, which
// ends every stream between two requests so that the graceful stop does not wait on idle
// streams (their callers see the stream end and retry on another replica).
func (s *Server) ComputeStream(st grpc.BidiStreamingServer[pb.ExpertsRequest, pb.ExpertsResponse]) error {
	ctx := st.Context()
	var (
		busy    sync.Mutex // held while a request is served
		stopped bool       // under busy: the handler returned
		done    = make(chan error, 1)
	)
	go func() {
		sc := &scratch{keep: true}
		defer func() {
			s.mu.Lock()
			if !s.closed {
				sc.free(s.m.Be)
			}
			s.mu.Unlock()
		}()
		resp := &pb.ExpertsResponse{}
		for {
			req, err := st.Recv()
			busy.Lock()
			if stopped {
				busy.Unlock()
				return
			}
			if errors.Is(err, io.EOF) {
				err = nil
			}
			if err == nil && req != nil {
				if err = s.serveTraced(ctx, req, resp, sc); err == nil {
					err = st.Send(resp)
				}
			}
			busy.Unlock()
			if err != nil || req == nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		return err
	case <-s.draining():
		busy.Lock()
		defer busy.Unlock()
		stopped = true
		select {
		case err := <-done: // the loop ended meanwhile
			return err
		default:
			return nil
		}
	}
}

// draining is closed when Shutdown begins.
func (s *Server) draining() <-chan struct{} {
	s.drainOnce.Do(func() { s.drain = make(chan struct{}) })
	return s.drain
}

// serveTraced is serve inside an expertd.compute span parented to req's traceparent, or
// without a span when req has none.
func (s *Server) serveTraced(ctx context.Context, req *pb.ExpertsRequest, resp *pb.ExpertsResponse, sc *scratch) error {
	tp := req.GetTraceparent()
	if tp == "" {
		return s.serve(ctx, req, resp, sc)
	}
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": tp})
	ctx, span := s.tracer.Start(ctx, "expertd.compute", trace.WithAttributes(
		attribute.Int("layer", int(req.GetLayer())), attribute.Int("rows", int(req.GetRows()))))
	defer span.End()
	err := s.serve(ctx, req, resp, sc)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}
