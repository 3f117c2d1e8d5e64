package services

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
)

// LivenessService is the health service name that reports SERVING from NewServer until Stop,
// whatever SetServing says: a liveness probe (Kubernetes' grpc probe with this service) asks it,
// so a replica that is alive but NOT_SERVING (an attnd waiting for its experts, an expertd
// draining) is taken out of rotation by readiness ("") without being restarted.
const LivenessService = "dlmesh.liveness"

// Server is a grpc.Server with the mesh's options, the error interceptors and the standard health
// service. Register services on it directly (it is a grpc.ServiceRegistrar):
//
//	srv := services.NewServer(cfg)
//	pb.RegisterExpertsServer(srv, impl)
//	go srv.Serve(lis)
//	srv.SetServing(true) // once the weights are resident
type Server struct {
	grpc        *grpc.Server
	health      *health.Server
	stopTimeout time.Duration

	mu       sync.Mutex
	names    []string // registered service names, each with a health status
	serving  bool
	shutdown bool
}

var _ grpc.ServiceRegistrar = (*Server)(nil)

// NewServer builds a server from cfg (zero fields take the defaults; the caller validates cfg)
// and extra grpc options appended after the mesh's own.
func NewServer(cfg ServerConfig, opts ...grpc.ServerOption) *Server {
	cfg = cfg.WithDefaults()
	var otelOpts []otelgrpc.Option
	if cfg.TracerProvider != nil {
		otelOpts = append(otelOpts, otelgrpc.WithTracerProvider(cfg.TracerProvider))
	}
	base := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgBytes),
		grpc.MaxSendMsgSize(cfg.MaxSendMsgBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    cfg.KeepaliveTime,
			Timeout: cfg.KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             cfg.MinPingInterval,
			PermitWithoutStream: true,
		}),
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelOpts...)),
		grpc.StatsHandler(trimStats{procTrim}),
	}
	if cfg.TLS.RequireClientCert() { // before the code table: the refusal is Unauthenticated
		base = append(base, grpc.ChainUnaryInterceptor(clientCertUnary), grpc.ChainStreamInterceptor(clientCertStream))
	}
	base = append(base,
		grpc.ChainUnaryInterceptor(cfg.Codes.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(append([]grpc.StreamServerInterceptor{cfg.Codes.StreamServerInterceptor()}, cfg.StreamInterceptors...)...),
	)
	if cfg.MaxConcurrentStreams > 0 {
		base = append(base, grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams))
	}
	switch {
	case cfg.TLS != nil:
		base = append(base, grpc.Creds(cfg.TLS.ServerCreds()))
	case cfg.Creds != nil: // neither: plaintext (insecure)
		base = append(base, grpc.Creds(cfg.Creds))
	}
	procTrim.start(cfg.IdleTrim)
	s := &Server{
		grpc:        grpc.NewServer(append(base, opts...)...),
		health:      health.NewServer(),
		stopTimeout: cfg.StopTimeout,
	}
	// health.NewServer reports the overall service "" as SERVING; a replica is not serving
	// until its owner says so.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	s.health.SetServingStatus(LivenessService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	if cfg.Reflection {
		reflection.Register(s.grpc)
	}
	return s
}

// RegisterService registers a service implementation; its health status follows SetServing.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.grpc.RegisterService(desc, impl)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.names = append(s.names, desc.ServiceName)
	s.health.SetServingStatus(desc.ServiceName, servingStatus(s.serving))
}

// GRPC returns the underlying server, for what the wrapper does not cover.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// SetServing flips the health status of the server ("") and of every registered service between
// SERVING and NOT_SERVING. After Stop it has no effect.
func (s *Server) SetServing(serving bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return
	}
	s.serving = serving
	st := servingStatus(serving)
	s.health.SetServingStatus("", st)
	for _, name := range s.names {
		s.health.SetServingStatus(name, st)
	}
}

func servingStatus(serving bool) healthpb.HealthCheckResponse_ServingStatus {
	if serving {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}

// Serve accepts connections on lis until Stop; it returns nil after Stop.
func (s *Server) Serve(lis net.Listener) error {
	if err := s.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("services: serve %s: %w", lis.Addr(), err)
	}
	return nil
}

// Stop shuts the server down: health NOT_SERVING for good, then GracefulStop (no new calls,
// in-flight ones finish) until ctx ends, then Stop, which cuts what is left. It returns nil after
// a graceful stop and ctx's error when calls had to be cut. Open health Watch streams count as
// in-flight calls, so a client watching health makes the stop wait for ctx.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	s.serving = false
	s.mu.Unlock()
	s.health.Shutdown()

	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
		return fmt.Errorf("services: graceful stop cut short: %w", ctx.Err())
	}
}
