package expertd

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dlmesh/dlmesh/services"
)

// Bounds of the compute histograms: seconds of one Compute's expert FFNs, and rows of one call.
var (
	computeBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}
	rowBuckets     = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096}
)

// computeStats counts the expert FFN work of Compute calls (decoding and encoding left out).
type computeStats struct {
	seconds, rowsPerCall *services.Histogram
	rows                 atomic.Uint64
}

func newComputeStats() computeStats {
	return computeStats{seconds: services.NewHistogram(computeBuckets), rowsPerCall: services.NewHistogram(rowBuckets)}
}

func (c *computeStats) computed(rows int, d time.Duration) {
	c.seconds.Observe(d.Seconds())
	c.rowsPerCall.Observe(float64(rows))
	c.rows.Add(uint64(rows))
}

// Meter is the meter of Compute calls (for the latency histogram).
func (s *Server) Meter() *services.LoadMeter { return s.meter }

// Collector returns expertd's compute metrics, labelled service="expertd" and instance (ID()):
//
//	dlmesh_expert_compute_seconds  histogram: the expert FFNs of one Compute call
//	dlmesh_expert_rows             histogram: rows (tokens) of one Compute call
//	dlmesh_expert_rows_total       rows computed since start
//
// The call metrics (count, errors, latency with decoding) are services.LoadCollector's.
func (s *Server) Collector() prometheus.Collector {
	l := prometheus.Labels{"service": "expertd", "instance": s.ID()}
	return &computeCollector{s: s,
		seconds: prometheus.NewDesc("dlmesh_expert_compute_seconds", "Time of the expert FFNs of one Compute call.", nil, l),
		perCall: prometheus.NewDesc("dlmesh_expert_rows", "Rows (tokens) of one Compute call.", nil, l),
		rows:    prometheus.NewDesc("dlmesh_expert_rows_total", "Rows (tokens) computed since start.", nil, l),
	}
}

type computeCollector struct {
	s                      *Server
	seconds, perCall, rows *prometheus.Desc
}

func (c *computeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.seconds
	ch <- c.perCall
	ch <- c.rows
}

func (c *computeCollector) Collect(ch chan<- prometheus.Metric) {
	st := &c.s.stats
	ch <- st.seconds.Metric(c.seconds)
	ch <- st.rowsPerCall.Metric(c.perCall)
	ch <- prometheus.MustNewConstMetric(c.rows, prometheus.CounterValue, float64(st.rows.Load()))
}
