package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/gateway"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// serveMetrics serves Prometheus metrics on addr at /metrics: the Go runtime's, the process's and
// cs. An empty addr serves nothing. With t it serves HTTPS with t's certificate (reloaded on
// change) and, when t names a CA, requires a client certificate signed by it (the mesh's
// members, a Prometheus given one); a plain HTTP request or a TLS client without that
// certificate is refused at the handshake. stop shuts the endpoint down.
func serveMetrics(addr string, t *services.TLS, cs ...prometheus.Collector) (stop func(), err error) {
	_, stop, err = listenMetrics(addr, t, cs...)
	return stop, err
}

// listenMetrics is serveMetrics that also returns the address it listens on.
func listenMetrics(addr string, t *services.TLS, cs ...prometheus.Collector) (bound string, stop func(), err error) {
	if addr == "" {
		return "", func() {}, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return "", nil, fmt.Errorf("metrics: %w", err)
		}
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	bound = lis.Addr().String()
	services.WarnExposed("metrics", "Prometheus metrics", bound, t != nil)
	scheme := "http"
	if t != nil {
		lis = tls.NewListener(lis, metricsTLSConfig(t))
		scheme = "https"
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(slog.Default().Handler(), slog.LevelWarn)} // refused handshakes, in the service's log
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics endpoint", "err", err)
		}
	}()
	slog.Info("metrics", "url", scheme+"://"+bound+"/metrics", "client_cert_required", t != nil && t.Config().CAFile != "")
	return bound, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

// metricsTLSConfig is t's server configuration (the current certificate and CA on each
// handshake) requiring a client certificate that verifies against the CA when t names one:
// unlike the gRPC servers, the metrics endpoint has no health method to leave open.
func metricsTLSConfig(t *services.TLS) *tls.Config {
	base := t.ServerTLSConfig("h2", "http/1.1")
	return &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := base.GetConfigForClient(hello)
		if err != nil {
			return nil, err
		}
		if c.ClientCAs != nil {
			c.ClientAuth = tls.RequireAndVerifyClientCert
		}
		return c, nil
	}}
}

// attndMetrics, expertdMetrics and gatewayMetrics are the collectors of one service instance.
func attndMetrics(s *attnd.Server) []prometheus.Collector {
	return []prometheus.Collector{services.NewLoadCollector("attnd", s.Instance().ID, true, s.Load).WithMeter(s.Meter()), s.Collector()}
}

func expertdMetrics(s *expertd.Server, id string) []prometheus.Collector {
	return []prometheus.Collector{
		services.NewLoadCollector("expertd", id, false, func() *pb.LoadStats { return s.Load().Proto() }).WithMeter(s.Meter()),
		s.Collector(),
	}
}

// gatewayMetrics: the request metrics (model_name), two gauges kept from before them:
// dlmesh_requests_queued (running + waiting, now split into dlmesh_num_requests_running and
// dlmesh_num_requests_waiting) and dlmesh_sessions, and the session migrations (attnd failover).
func gatewayMetrics(s *gateway.Server) []prometheus.Collector {
	l := prometheus.Labels{"service": "gateway", "instance": s.Instance().ID}
	return append(s.Collectors(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dlmesh_requests_queued", ConstLabels: l,
			Help: "Requests waiting or running in the gateway's engine."}, func() float64 { return float64(s.Queued()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dlmesh_sessions", ConstLabels: l,
			Help: "Open sessions."}, func() float64 { return float64(s.Stepper().Sessions()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "dlmesh_session_migrations_total", ConstLabels: l,
			Help: "Sessions reopened on another attnd, and re-prefilled, after their attnd failed, left discovery or lost them."},
			func() float64 { return float64(s.Migrations()) }),
	)
}
