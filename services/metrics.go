package services

import (
	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// LoadCollector exports a service's load (the LoadStats its Info reports) as Prometheus metrics,
// read when scraped:
//
//	dlmesh_calls_in_flight, dlmesh_calls_total, dlmesh_call_errors_total,
//	dlmesh_call_latency_window_seconds{quantile="0.5"|"0.99"} (over the meter's window),
//	with a meter (WithMeter): dlmesh_call_latency_seconds, a histogram since start,
//	and with kv: dlmesh_sessions, dlmesh_kv_tokens, dlmesh_kv_capacity_tokens
//
// each labelled with service and instance. (dlmesh_call_latency_seconds was the window quantile
// gauge before it became the histogram; the gauge is dlmesh_call_latency_window_seconds now.)
type LoadCollector struct {
	load  func() *pb.LoadStats
	kv    bool
	meter *LoadMeter

	inFlight, calls, errors, latency, hist, sessions, kvTokens, kvCapacity *prometheus.Desc
}

var _ prometheus.Collector = (*LoadCollector)(nil)

// NewLoadCollector returns a collector of load for one instance of service; kv adds the session
// and KV-cache gauges (attnd).
func NewLoadCollector(service, instance string, kv bool, load func() *pb.LoadStats) *LoadCollector {
	l := prometheus.Labels{"service": service, "instance": instance}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, extra, l)
	}
	return &LoadCollector{load: load, kv: kv,
		inFlight:   d("dlmesh_calls_in_flight", "Calls being served now."),
		calls:      d("dlmesh_calls_total", "Calls answered without error since start."),
		errors:     d("dlmesh_call_errors_total", "Calls answered with an error since start."),
		latency:    d("dlmesh_call_latency_window_seconds", "Latency quantiles of the calls answered without error in the recent window.", "quantile"),
		hist:       d("dlmesh_call_latency_seconds", "Latency of the calls answered without error since start."),
		sessions:   d("dlmesh_sessions", "Open sessions."),
		kvTokens:   d("dlmesh_kv_tokens", "KV cache positions holding keys and values, over the open sessions."),
		kvCapacity: d("dlmesh_kv_capacity_tokens", "KV cache positions reserved by the open sessions."),
	}
}

// WithMeter adds the latency histogram of m (the meter behind load) as
// dlmesh_call_latency_seconds; it returns c.
func (c *LoadCollector) WithMeter(m *LoadMeter) *LoadCollector {
	c.meter = m
	return c
}

// Describe implements prometheus.Collector.
func (c *LoadCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.inFlight, c.calls, c.errors, c.latency} {
		ch <- d
	}
	if c.meter != nil {
		ch <- c.hist
	}
	if c.kv {
		ch <- c.sessions
		ch <- c.kvTokens
		ch <- c.kvCapacity
	}
}

// Collect implements prometheus.Collector.
func (c *LoadCollector) Collect(ch chan<- prometheus.Metric) {
	l := c.load()
	if l == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(l.GetInFlight()))
	ch <- prometheus.MustNewConstMetric(c.calls, prometheus.CounterValue, float64(l.GetCalls()))
	ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(l.GetErrors()))
	ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, l.GetP50Ms()/1000, "0.5")
	ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, l.GetP99Ms()/1000, "0.99")
	if c.meter != nil {
		h := c.meter.Histogram()
		ch <- prometheus.MustNewConstHistogram(c.hist, h.Count, h.SumSeconds, h.Buckets)
	}
	if c.kv {
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(l.GetSessions()))
		ch <- prometheus.MustNewConstMetric(c.kvTokens, prometheus.GaugeValue, float64(l.GetKvTokens()))
		ch <- prometheus.MustNewConstMetric(c.kvCapacity, prometheus.GaugeValue, float64(l.GetKvCapacityTokens()))
	}
}
