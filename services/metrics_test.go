package services

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

func TestLoadCollector(t *testing.T) {
	now := time.Unix(1000, 0)
	m := newLoadMeter(time.Minute, func() time.Time { return now })
	for i := range 4 {
		end := m.Start()
		now = now.Add(time.Duration(i+1) * 10 * time.Millisecond)
		var err error
		if i == 3 {
			err = errors.New("boom")
		}
		end(err)
	}
	_ = m.Start() // one call still in flight
	var sessions int32 = 3
	c := NewLoadCollector("attnd", "attnd-0", true, func() *pb.LoadStats {
		l := m.Snapshot().Proto()
		l.Sessions, l.KvTokens, l.KvCapacityTokens = sessions, 96, 256
		return l
	}).WithMeter(m)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP dlmesh_call_errors_total Calls answered with an error since start.
# TYPE dlmesh_call_errors_total counter
dlmesh_call_errors_total{instance="attnd-0",service="attnd"} 1
# HELP dlmesh_calls_in_flight Calls being served now.
# TYPE dlmesh_calls_in_flight gauge
dlmesh_calls_in_flight{instance="attnd-0",service="attnd"} 1
# HELP dlmesh_calls_total Calls answered without error since start.
# TYPE dlmesh_calls_total counter
dlmesh_calls_total{instance="attnd-0",service="attnd"} 3
# HELP dlmesh_kv_tokens KV cache positions holding keys and values, over the open sessions.
# TYPE dlmesh_kv_tokens gauge
dlmesh_kv_tokens{instance="attnd-0",service="attnd"} 96
# HELP dlmesh_sessions Open sessions.
# TYPE dlmesh_sessions gauge
dlmesh_sessions{instance="attnd-0",service="attnd"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "dlmesh_calls_total", "dlmesh_call_errors_total",
		"dlmesh_calls_in_flight", "dlmesh_sessions", "dlmesh_kv_tokens"); err != nil {
		t.Fatal(err)
	}
	// The latency quantiles are those of the three calls answered without error (10, 20, 30 ms),
	// within the meter's 4.5 % bins.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "dlmesh_call_latency_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() != 3 || h.GetSampleSum() < 0.0599 || h.GetSampleSum() > 0.0601 {
				t.Errorf("latency histogram: %d calls summing to %v s, want 3 summing to 0.06 s", h.GetSampleCount(), h.GetSampleSum())
			}
			cum := map[float64]uint64{}
			for _, b := range h.GetBucket() {
				cum[b.GetUpperBound()] = b.GetCumulativeCount()
			}
			// 10 ms falls in le=0.01, 20 and 30 ms in le=0.025 and le=0.05.
			for ub, want := range map[float64]uint64{0.005: 0, 0.01: 1, 0.025: 2, 0.05: 3, 30: 3} {
				if cum[ub] != want {
					t.Errorf("latency histogram bucket le=%v: %d, want %d", ub, cum[ub], want)
				}
			}
		}
		if mf.GetName() != "dlmesh_call_latency_window_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "quantile" {
					got[lp.GetValue()] = mt.GetGauge().GetValue()
				}
			}
		}
	}
	for q, want := range map[string]float64{"0.5": 0.020, "0.99": 0.030} {
		if g := got[q]; g < want*0.95 || g > want*1.05 {
			t.Errorf("latency quantile %s: %v s, want about %v s", q, g, want)
		}
	}
	// Without kv the session gauges are left out.
	reg2 := prometheus.NewPedanticRegistry()
	reg2.MustRegister(NewLoadCollector("expertd", "e0", false, func() *pb.LoadStats { return m.Snapshot().Proto() }))
	if n, err := testutil.GatherAndCount(reg2, "dlmesh_sessions"); err != nil || n != 0 {
		t.Errorf("expertd exports %d session gauges (%v)", n, err)
	}
}
