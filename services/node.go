package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// NodeConfig configures a Node.
type NodeConfig struct {
	// Name prefixes the node's errors: the service's name ("attnd", "expertd", "gateway").
	Name string
	// Listen is the TCP address to serve on (host:port; port 0 picks a free port).
	Listen string
	// Server configures the gRPC server: message sizes, keepalive, reflection, transport
	// credentials, and StopTimeout, which bounds Stop.
	Server ServerConfig
	// Codes is the service's error → status table (ServerConfig.Codes).
	Codes CodeTable
	// TracerProvider traces the server's calls (ServerConfig.TracerProvider); nil means the
	// global provider.
	TracerProvider trace.TracerProvider
	// Registry is where Register records the instance and Stop removes it; nil: no discovery.
	Registry Registry
	// Drain, when set, runs in Stop after deregistration and before the graceful stop, under
	// Stop's deadline: a stateful service waits there for its clients to move their state
	// elsewhere (attnd: the gateways migrate its sessions once it has left discovery).
	Drain func(context.Context)
}

// Node owns the life of one service process (or of one service inside `dlmesh up`): it
// listens, serves gRPC with health NOT_SERVING while the service loads, reports SERVING when
// the service says so, registers the instance in discovery, and stops in the house order:
// health NOT_SERVING, deregistration, GracefulStop under a deadline, then Stop.
//
// A service builds one with StartNode, handing it its handlers (register) and its loading step
// (load); it then calls SetServing and Register as its own readiness rule dictates (expertd once
// its experts are loaded, attnd while every expert is covered, the gateway while an attnd is
// known), and Stop from its Shutdown before freeing its resources.
type Node struct {
	cfg    NodeConfig
	srv    *Server
	lis    net.Listener
	served chan error

	mu         sync.Mutex
	registered *Instance
	stopped    bool

	stopOnce sync.Once
	stopErr  error
}

// StartNode listens on cfg.Listen, builds the server (cfg.Server, zero fields defaulted), lets
// register add the service's handlers, serves with health NOT_SERVING, and runs load (nil: none)
// under ctx. When load fails the node is stopped and load's error returned with the stop's.
func StartNode(ctx context.Context, cfg NodeConfig, register func(grpc.ServiceRegistrar), load func(context.Context) error) (*Node, error) {
	cfg.Server = cfg.Server.WithDefaults()
	cfg.Server.Codes, cfg.Server.TracerProvider = cfg.Codes, TracerProvider(cfg.TracerProvider)
	if err := cfg.Server.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Name, err)
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%s: listen: %w", cfg.Name, err)
	}
	WarnExposed(cfg.Name, "gRPC", lis.Addr().String(), cfg.Server.TLS != nil || cfg.Server.Creds != nil)
	n := &Node{cfg: cfg, srv: NewServer(cfg.Server), lis: lis, served: make(chan error, 1)}
	register(n.srv)
	go func() { n.served <- n.srv.Serve(lis) }()
	if load != nil {
		if err := load(ctx); err != nil {
			return nil, errors.Join(err, n.Stop(context.WithoutCancel(ctx)))
		}
	}
	return n, nil
}

// Addr is the address the node listens on.
func (n *Node) Addr() string { return n.lis.Addr().String() }

// SetServing sets the health status of the server and its services (SERVING or NOT_SERVING).
// After Stop began it has no effect.
func (n *Node) SetServing(serving bool) { n.srv.SetServing(serving) }

// Register records in in the registry (nothing without one); Stop deregisters it. Registering
// again replaces the record; after Stop began it is refused.
func (n *Node) Register(ctx context.Context, in Instance) error {
	if n.cfg.Registry == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return fmt.Errorf("%s: register %s: node stopping", n.cfg.Name, in.ID)
	}
	if err := n.cfg.Registry.Register(ctx, in); err != nil {
		return fmt.Errorf("%s: register %s: %w", n.cfg.Name, in.ID, err)
	}
	n.registered = &in
	return nil
}

// Registered reports whether the instance is in the registry (Register succeeded, Stop has not
// removed it).
func (n *Node) Registered() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.registered != nil
}

// Stop shuts the node down, once: health NOT_SERVING for good, deregistration, GracefulStop (no
// new calls, in-flight ones finish) until ctx or Server.StopTimeout ends, whichever is first,
// then Stop, which cuts what is left. Later calls return the first call's result.
func (n *Node) Stop(ctx context.Context) error {
	n.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(ctx, n.cfg.Server.StopTimeout)
		defer cancel()
		n.srv.SetServing(false)
		n.mu.Lock()
		n.stopped = true
		in := n.registered
		n.registered = nil
		n.mu.Unlock()
		var errs []error
		if in != nil {
			if err := n.cfg.Registry.Deregister(ctx, in.ID); err != nil {
				errs = append(errs, fmt.Errorf("%s: deregister %s: %w", n.cfg.Name, in.ID, err))
			}
		}
		if n.cfg.Drain != nil {
			n.cfg.Drain(ctx)
		}
		errs = append(errs, n.srv.Stop(ctx), <-n.served)
		n.stopErr = errors.Join(errs...)
	})
	return n.stopErr
}

// WarnExposed logs a warning when a service (a Node, the HTTP API) binds a non-loopback address without TLS (anyone
// who reaches the network reaches it in clear text) and an info line when it binds one with TLS.
func WarnExposed(name, what, addr string, tls bool) {
	if IsLoopback(addr) {
		return
	}
	if !tls {
		slog.Warn(name+": serving "+what+" on a non-loopback address without TLS; pass --tls-cert and --tls-key (and --tls-ca for mTLS)", "service", name, "addr", addr)
		return
	}
	slog.Info(name+": serving "+what+" with TLS on a non-loopback address", "service", name, "addr", addr)
}

// TracerProvider is tp, or the global provider when tp is nil: what a service traces with.
func TracerProvider(tp trace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		return otel.GetTracerProvider()
	}
	return tp
}

// SignalContext returns a copy of ctx that ends on SIGINT or SIGTERM: a command runs its
// services under it and, when it ends, shuts them down (each Shutdown stops its Node).
func SignalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}
