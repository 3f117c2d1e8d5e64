package testutil

import (
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// echoExperts answers every Compute with a canned response of the right size at once.
type echoExperts struct {
	pb.UnimplementedExpertsServer
	resp *pb.ExpertsResponse
}

func (e *echoExperts) Compute(context.Context, *pb.ExpertsRequest) (*pb.ExpertsResponse, error) {
	return e.resp, nil
}

func (e *echoExperts) ComputeStream(stream grpc.BidiStreamingServer[pb.ExpertsRequest, pb.ExpertsResponse]) error {
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
		if err := stream.Send(e.resp); err != nil {
			return err
		}
	}
}

// ExpertEchoStream is ExpertEcho over one long-lived ComputeStream per server (what attnd's
// lanes do) instead of a unary call per layer, with the mesh's gRPC options.
func ExpertEchoStream(tb testing.TB, reqs []*pb.ExpertsRequest, respBytes []int) (layer func()) {
	tb.Helper()
	var streams []grpc.BidiStreamingClient[pb.ExpertsRequest, pb.ExpertsResponse]
	for i := range reqs {
		cc := echoServer(tb, respBytes[i], true)
		st, err := pb.NewExpertsClient(cc).ComputeStream(context.Background())
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = st.CloseSend() })
		streams = append(streams, st)
	}
	return func() {
		for i, st := range streams {
			if err := st.Send(reqs[i]); err != nil {
				tb.Error(err)
			}
		}
		for _, st := range streams {
			if _, err := st.Recv(); err != nil {
				tb.Error(err)
			}
		}
	}
}

// echoServer starts one echo server answering respBytes bytes and returns a connection to it.
func echoServer(tb testing.TB, respBytes int, meshOpts bool) *grpc.ClientConn {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	es := &echoExperts{resp: &pb.ExpertsResponse{Dtype: pb.DType_DTYPE_F32, Y: make([]byte, respBytes)}}
	var cc *grpc.ClientConn
	if meshOpts {
		srv := services.NewServer(services.ServerConfig{})
		pb.RegisterExpertsServer(srv, es)
		srv.SetServing(true)
		go func() { _ = srv.Serve(lis) }()
		tb.Cleanup(func() { _ = srv.Stop(context.Background()) })
		cc, err = services.Dial(lis.Addr().String(), services.ClientConfig{})
	} else {
		srv := grpc.NewServer()
		pb.RegisterExpertsServer(srv, es)
		go func() { _ = srv.Serve(lis) }()
		tb.Cleanup(srv.Stop)
		cc, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}

// ExpertEcho is the floor of an expert hop: one loopback gRPC server per expert group that
// answers a Compute at once with a response of respBytes[i] bytes, and a function making one
// layer's calls (reqs[i] to server i, all in parallel, as attnd's fan-out does). With meshOpts
// the servers and connections are the mesh's own (services.NewServer and services.Dial:
// interceptors, OpenTelemetry stats handlers, keepalive); without, plain grpc-go. The servers
// stop when the test ends.
func ExpertEcho(tb testing.TB, reqs []*pb.ExpertsRequest, respBytes []int, meshOpts bool) (layer func()) {
	tb.Helper()
	var clients []pb.ExpertsClient
	for i := range reqs {
		clients = append(clients, pb.NewExpertsClient(echoServer(tb, respBytes[i], meshOpts)))
	}
	return func() {
		var wg sync.WaitGroup
		for i, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.Compute(context.Background(), reqs[i]); err != nil {
					tb.Error(err)
				}
			}()
		}
		wg.Wait()
	}
}
