package services

import (
	"context"
	"net"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testServer is a Server serving on an in-memory listener.
type testServer struct {
	*Server
	lis *bufconn.Listener
}

// startServer serves srv on bufconn until the test ends.
func startServer(tb testing.TB, cfg ServerConfig, register func(*Server)) *testServer {
	tb.Helper()
	srv := NewServer(cfg)
	if register != nil {
		register(srv)
	}
	lis := bufconn.Listen(1 << 20)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 0)
		defer cancel()
		_ = srv.Stop(ctx) // tests that care stop it themselves first
		if err := <-served; err != nil {
			tb.Errorf("Serve: %v", err)
		}
	})
	return &testServer{Server: srv, lis: lis}
}

// dial connects to ts with Dial and closes the connection when the test ends.
func (ts *testServer) dial(tb testing.TB, cfg ClientConfig) *grpc.ClientConn {
	tb.Helper()
	cc, err := Dial("passthrough:///bufnet", cfg, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return ts.lis.DialContext(ctx)
	}))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// fakeExperts echoes x as y, or returns err when it is set.
type fakeExperts struct {
	pb.UnimplementedExpertsServer
	err   error
	block bool // wait for the call's context to end
}

var _ pb.ExpertsServer = (*fakeExperts)(nil)

func (f *fakeExperts) Compute(ctx context.Context, req *pb.ExpertsRequest) (*pb.ExpertsResponse, error) {
	if f.block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	return &pb.ExpertsResponse{Dtype: req.GetDtype(), Y: req.GetX()}, nil
}

func (f *fakeExperts) Info(context.Context, *pb.InfoRequest) (*pb.ExpertSetInfo, error) {
	return &pb.ExpertSetInfo{Experts: []int32{0, 1, 2, 3}, Fingerprint: "test"}, nil
}

func newBufListener() *bufconn.Listener { return bufconn.Listen(1 << 20) }
