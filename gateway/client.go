package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// DefaultGenerateTimeout is the deadline Client.Generate gives a call whose context has none.
const DefaultGenerateTimeout = 10 * time.Minute

// Client streams Generate calls to a gateway.
type Client struct {
	// Timeout is the deadline of a Generate whose context has none (DefaultGenerateTimeout);
	// negative means none.
	Timeout time.Duration

	cc *grpc.ClientConn
	gw pb.GatewayClient
}

// Dial returns a client of the gateway at addr with the mesh's client options.
func Dial(addr string, cfg services.ClientConfig) (*Client, error) {
	cc, err := services.Dial(addr, cfg)
	if err != nil {
		return nil, err
	}
	return &Client{Timeout: DefaultGenerateTimeout, cc: cc, gw: pb.NewGatewayClient(cc)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.cc.Close() }

// Generate runs one request, calling onEvent (may be nil) for every StepEvent and BlockEvent as
// it arrives, and returns the FinalEvent. An error from onEvent cancels the call and is
// returned. gRPC errors come back as status errors (status.Code tells InvalidArgument,
// ResourceExhausted, …).
func (c *Client) Generate(ctx context.Context, req *pb.GenerateRequest, onEvent func(*pb.GenerateEvent) error) (*pb.FinalEvent, error) {
	if _, ok := ctx.Deadline(); !ok && c.Timeout >= 0 {
		d := c.Timeout
		if d == 0 {
			d = DefaultGenerateTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.gw.Generate(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("gateway: stream ended without a final event")
		}
		if err != nil {
			return nil, err
		}
		if f := ev.GetFinal(); f != nil {
			return f, nil
		}
		if onEvent != nil {
			if err := onEvent(ev); err != nil {
				return nil, err
			}
		}
	}
}
