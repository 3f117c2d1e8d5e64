package attnd

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dlmesh/dlmesh/services"
)

// fanoutBuckets are the bounds, in seconds, of the per-layer expert fan-out histogram.
var fanoutBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

// routeStats counts what the router sent where: tokens per (MoE layer, expert), rows per expert
// group, and the fan-out time of each layer. Sized by init once the model is loaded (after New);
// ready tells readers that it was.
type routeStats struct {
	ready          atomic.Bool
	firstMoE, nExp int
	tokens         []atomic.Uint64       // [(layer-firstMoE)·nExp + expert]
	fanout         []*services.Histogram // per MoE layer
	groupMu        sync.Mutex
	groups         map[string]*atomic.Uint64
}

// init sizes the counters for the model's layers; call it once, before any step.
func (rs *routeStats) init(layers, firstMoE, experts int) {
	rs.firstMoE, rs.nExp = firstMoE, experts
	n := max(layers-firstMoE, 0)
	if experts == 0 {
		n = 0
	}
	rs.tokens = make([]atomic.Uint64, n*experts)
	rs.fanout = make([]*services.Histogram, n)
	for i := range rs.fanout {
		rs.fanout[i] = services.NewHistogram(fanoutBuckets)
	}
	rs.groups = map[string]*atomic.Uint64{}
	rs.ready.Store(true)
}

// routed counts one layer's routing: ids is [T·k] (-1: masked), parts the rows per group of r.
func (rs *routeStats) routed(layer int, ids []int32, r *routes, parts []part) {
	if !rs.ready.Load() {
		return
	}
	base := (layer - rs.firstMoE) * rs.nExp
	if base < 0 || base+rs.nExp > len(rs.tokens) {
		return
	}
	for _, e := range ids {
		if e >= 0 && int(e) < rs.nExp {
			rs.tokens[base+int(e)].Add(1)
		}
	}
	rs.groupMu.Lock()
	defer rs.groupMu.Unlock()
	for _, p := range parts {
		key := r.groups[p.group].key
		c, ok := rs.groups[key]
		if !ok {
			c = new(atomic.Uint64)
			rs.groups[key] = c
		}
		c.Add(uint64(len(p.rows)))
	}
}

// fannedOut records a layer's fan-out time: from Dispatch to the answers summed.
func (rs *routeStats) fannedOut(layer int, d time.Duration) {
	if i := layer - rs.firstMoE; i >= 0 && i < len(rs.fanout) {
		rs.fanout[i].Observe(d.Seconds())
	}
}

// expertTotals is the tokens per expert, summed over the layers.
func (rs *routeStats) expertTotals() map[int32]int64 {
	if !rs.ready.Load() || rs.nExp == 0 {
		return nil
	}
	out := make(map[int32]int64, rs.nExp)
	for i := range rs.tokens {
		if n := rs.tokens[i].Load(); n > 0 {
			out[int32(i%rs.nExp)] += int64(n)
		}
	}
	return out
}

func (rs *routeStats) groupTotals() map[string]int64 {
	if !rs.ready.Load() {
		return nil
	}
	rs.groupMu.Lock()
	defer rs.groupMu.Unlock()
	out := make(map[string]int64, len(rs.groups))
	for k, c := range rs.groups {
		out[k] = int64(c.Load())
	}
	return out
}

// Collector returns attnd's routing metrics, labelled service="attnd" and instance:
//
//	dlmesh_expert_tokens_total{layer,expert}  tokens the router sent to each expert of each MoE layer
//	dlmesh_group_tokens_total{group}          rows sent to each expert group (its expert set)
//	dlmesh_expert_fanout_seconds{layer}       histogram: a MoE layer's expert hop, dispatch to sum
//
// Layer and expert are decimal ids. The load metrics (calls, latency, sessions, KV) are
// services.LoadCollector's.
func (s *Server) Collector() prometheus.Collector {
	l := prometheus.Labels{"service": "attnd", "instance": s.cfg.ID}
	return &routeCollector{s: s,
		tokens: prometheus.NewDesc("dlmesh_expert_tokens_total", "Tokens the router sent to each expert of each MoE layer.", []string{"layer", "expert"}, l),
		groups: prometheus.NewDesc("dlmesh_group_tokens_total", "Rows (tokens) sent to each expert group, by its expert set.", []string{"group"}, l),
		fanout: prometheus.NewDesc("dlmesh_expert_fanout_seconds", "Time of a MoE layer's expert hop, from dispatch to the groups' answers summed.", []string{"layer"}, l),
	}
}

type routeCollector struct {
	s                      *Server
	tokens, groups, fanout *prometheus.Desc
}

func (c *routeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.tokens
	ch <- c.groups
	ch <- c.fanout
}

func (c *routeCollector) Collect(ch chan<- prometheus.Metric) {
	rs := &c.s.stats
	if !rs.ready.Load() {
		return // not loaded yet
	}
	for i := range rs.tokens {
		layer, e := strconv.Itoa(rs.firstMoE+i/rs.nExp), strconv.Itoa(i%rs.nExp)
		ch <- prometheus.MustNewConstMetric(c.tokens, prometheus.CounterValue, float64(rs.tokens[i].Load()), layer, e)
	}
	for k, n := range rs.groupTotals() {
		ch <- prometheus.MustNewConstMetric(c.groups, prometheus.CounterValue, float64(n), k)
	}
	for i, h := range rs.fanout {
		ch <- h.Metric(c.fanout, strconv.Itoa(rs.firstMoE+i))
	}
}
