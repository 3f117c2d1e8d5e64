package services

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// DefaultLoadWindow is the window of LoadMeter's latency percentiles.
const DefaultLoadWindow = time.Minute

// Latency histogram: bin i holds latencies in [2^(i/binsPerOctave), 2^((i+1)/binsPerOctave)) µs,
// from 1 µs up to 2^(loadBins/binsPerOctave) µs (~ 2.3 h; longer ones land in the last bin). A
// percentile is reported as the bin's geometric middle: within 4.5% of the true value.
const (
	binsPerOctave = 8
	loadBins      = 34 * binsPerOctave
	loadSlots     = 60 // the window is cut into this many slots, dropped whole as they age
)

// LoadMeter counts a service's calls: in flight, answered, failed, and the latency percentiles of
// the calls answered in the last window. Safe for concurrent use; the zero value is not usable.
type LoadMeter struct {
	inFlight, calls, errors atomic.Int64

	// Cumulative histogram of every call answered without error since start (for Prometheus):
	// hist[i] counts latencies <= LatencyBuckets[i] (not cumulated across buckets here).
	hist  [len(LatencyBuckets) + 1]atomic.Uint64
	sumNs atomic.Int64

	now  func() time.Time
	slot time.Duration // window / loadSlots

	mu    sync.Mutex
	slots [loadSlots]loadSlot
}

type loadSlot struct {
	start int64 // slot number (unix ns / slot); the slot is stale when it is not current
	n     int64
	bins  [loadBins]uint32
}

// LatencyBuckets are the upper bounds, in seconds, of the call latency histogram
// (dlmesh_call_latency_seconds): 0.5 ms to 30 s.
var LatencyBuckets = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// LatencyHistogram is the histogram of the calls a LoadMeter saw answered without error since
// start: Buckets[i] is the number of calls of at most LatencyBuckets[i] seconds (cumulative, as
// Prometheus wants it).
type LatencyHistogram struct {
	Count      uint64
	SumSeconds float64
	Buckets    map[float64]uint64
}

// Histogram returns the latency histogram of the calls answered without error since start.
func (m *LoadMeter) Histogram() LatencyHistogram {
	h := LatencyHistogram{SumSeconds: time.Duration(m.sumNs.Load()).Seconds(), Buckets: make(map[float64]uint64, len(LatencyBuckets))}
	var cum uint64
	for i, ub := range LatencyBuckets {
		cum += m.hist[i].Load()
		h.Buckets[ub] = cum
	}
	h.Count = cum + m.hist[len(LatencyBuckets)].Load()
	return h
}

// LoadSnapshot is a LoadMeter's readings at one time.
type LoadSnapshot struct {
	InFlight, Calls, Errors int64
	// P50 and P99 are over the WindowCalls calls answered in the last Window (0 when none).
	P50, P99    time.Duration
	Window      time.Duration
	WindowCalls int64
}

// NewLoadMeter returns a meter whose percentiles cover the last window (DefaultLoadWindow when
// window is not positive), in steps of window/60.
func NewLoadMeter(window time.Duration) *LoadMeter {
	return newLoadMeter(window, time.Now)
}

func newLoadMeter(window time.Duration, now func() time.Time) *LoadMeter {
	if window <= 0 {
		window = DefaultLoadWindow
	}
	return &LoadMeter{now: now, slot: max(window/loadSlots, time.Millisecond)}
}

// Start counts a call in flight; call the returned function once with the call's error when it
// ends. Calls answered without error count in the latency percentiles.
func (m *LoadMeter) Start() (end func(err error)) {
	m.inFlight.Add(1)
	t0 := m.now()
	var once sync.Once
	return func(err error) {
		once.Do(func() {
			m.inFlight.Add(-1)
			if err != nil {
				m.errors.Add(1)
				return
			}
			m.calls.Add(1)
			t1 := m.now()
			m.observe(t1, t1.Sub(t0))
		})
	}
}

func binOf(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	if us < 1 {
		return 0
	}
	return min(int(math.Log2(us)*binsPerOctave), loadBins-1)
}

// binValue is the geometric middle of bin i.
func binValue(i int) time.Duration {
	return time.Duration(math.Exp2((float64(i)+0.5)/binsPerOctave) * float64(time.Microsecond))
}

func (m *LoadMeter) observe(at time.Time, d time.Duration) {
	sec := d.Seconds()
	i := 0
	for i < len(LatencyBuckets) && sec > LatencyBuckets[i] {
		i++
	}
	m.hist[i].Add(1)
	m.sumNs.Add(int64(d))
	n := at.UnixNano() / int64(m.slot)
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &m.slots[n%loadSlots]
	if s.start != n {
		*s = loadSlot{start: n}
	}
	s.n++
	s.bins[binOf(d)]++
}

// Snapshot returns the current readings.
func (m *LoadMeter) Snapshot() LoadSnapshot {
	snap := LoadSnapshot{InFlight: m.inFlight.Load(), Calls: m.calls.Load(), Errors: m.errors.Load(), Window: m.slot * loadSlots}
	cur := m.now().UnixNano() / int64(m.slot)
	var bins [loadBins]int64
	m.mu.Lock()
	for i := range m.slots {
		s := &m.slots[i]
		if s.n == 0 || s.start <= cur-loadSlots || s.start > cur {
			continue
		}
		snap.WindowCalls += s.n
		for b, c := range s.bins {
			bins[b] += int64(c)
		}
	}
	m.mu.Unlock()
	if snap.WindowCalls == 0 {
		return snap
	}
	quantile := func(q float64) time.Duration {
		rank := int64(math.Ceil(q * float64(snap.WindowCalls))) // the rank-th smallest, 1-based
		var seen int64
		for b, c := range bins {
			if seen += c; seen >= max(rank, 1) {
				return binValue(b)
			}
		}
		return binValue(loadBins - 1)
	}
	snap.P50, snap.P99 = quantile(0.5), quantile(0.99)
	return snap
}

// Proto is the snapshot as the LoadStats of an Info answer.
func (s LoadSnapshot) Proto() *pb.LoadStats {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return &pb.LoadStats{InFlight: s.InFlight, Calls: s.Calls, Errors: s.Errors, P50Ms: ms(s.P50), P99Ms: ms(s.P99),
		WindowS: int32(s.Window / time.Second), WindowCalls: s.WindowCalls}
}
