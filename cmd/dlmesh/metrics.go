package main

import (
	"context"
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
// cs. An empty addr serves nothing. stop shuts the endpoint down.
func serveMetrics(addr string, cs ...prometheus.Collector) (stop func(), err error) {
	_, stop, err = listenMetrics(addr, cs...)
	return stop, err
}

// listenMetrics is serveMetrics that also returns the address it listens on.
func listenMetrics(addr string, cs ...prometheus.Collector) (bound string, stop func(), err error) {
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
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("metrics endpoint", "err", err)
		}
	}()
	slog.Info("metrics", "url", "http://"+lis.Addr().String()+"/metrics")
	return lis.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
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
