package services

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Dial makes a client connection to addr ("host:port" or any grpc target) with the mesh's options:
// keepalive pings also on idle connections, message size limits, the OpenTelemetry stats handler
// and a default deadline for unary calls without one. The connection is TLS with cfg.TLS (the
// server verified against its CA, the client's certificate presented when it has one), else
// plaintext (loopback or a private network). Like
// grpc.NewClient it does not connect until the first call. Extra options go after the mesh's own.
func Dial(addr string, cfg ClientConfig, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	cfg = cfg.WithDefaults()
	var otelOpts []otelgrpc.Option
	if cfg.TracerProvider != nil {
		otelOpts = append(otelOpts, otelgrpc.WithTracerProvider(cfg.TracerProvider))
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = cfg.TLS.ClientCreds()
	}
	base := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(cfg.MaxRecvMsgBytes),
			grpc.MaxCallSendMsgSize(cfg.MaxSendMsgBytes),
		),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                cfg.KeepaliveTime,
			Timeout:             cfg.KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOpts...)),
		grpc.WithStatsHandler(trimStats{procTrim}),
	}
	if cfg.CallTimeout > 0 {
		base = append(base, grpc.WithChainUnaryInterceptor(callTimeoutInterceptor(cfg.CallTimeout)))
	}
	redial := backoff.DefaultConfig
	redial.MaxDelay = cfg.ReconnectBackoff
	redial.BaseDelay = min(redial.BaseDelay, redial.MaxDelay)
	base = append(base, grpc.WithConnectParams(grpc.ConnectParams{Backoff: redial, MinConnectTimeout: 20 * time.Second}))
	cc, err := grpc.NewClient(addr, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("services: dial %s: %w", addr, err)
	}
	return cc, nil
}

// WithTimeout returns a context for one call that ends after d, or earlier if ctx has an earlier
// deadline; d <= 0 means no deadline of its own. Always call cancel.
func WithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// callTimeoutInterceptor gives unary calls without a deadline the default one.
func callTimeoutInterceptor(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}
