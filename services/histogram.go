package services

import (
	"math"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Histogram counts observations into fixed buckets with atomics, for collectors that export
// const metrics (one per instance in processes that run several, like `dlmesh up`). Safe for
// concurrent use; the zero value is not usable.
type Histogram struct {
	upper  []float64       // bucket upper bounds, ascending
	counts []atomic.Uint64 // per bucket, the last one is +Inf
	sum    atomic.Uint64   // float64 bits
}

// NewHistogram returns an empty histogram over the upper bounds buckets (ascending).
func NewHistogram(buckets []float64) *Histogram {
	return &Histogram{upper: buckets, counts: make([]atomic.Uint64, len(buckets)+1)}
}

// Observe adds v.
func (h *Histogram) Observe(v float64) {
	i := 0
	for i < len(h.upper) && v > h.upper[i] {
		i++
	}
	h.counts[i].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 {
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
	}
	return n
}

// Metric is the histogram as a Prometheus const histogram of desc with labelValues.
func (h *Histogram) Metric(desc *prometheus.Desc, labelValues ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.upper))
	var cum uint64
	for i, ub := range h.upper {
		cum += h.counts[i].Load()
		buckets[ub] = cum
	}
	cum += h.counts[len(h.upper)].Load()
	return prometheus.MustNewConstHistogram(desc, cum, math.Float64frombits(h.sum.Load()), buckets, labelValues...)
}
