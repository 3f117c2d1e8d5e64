package services

import (
	"errors"
	"math"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable time source.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// call runs one metered call that takes d on the clock.
func call(m *LoadMeter, c *fakeClock, d time.Duration, err error) {
	end := m.Start()
	c.add(d)
	end(err)
}

func near(got, want time.Duration, rel float64) bool {
	return math.Abs(float64(got-want)) <= rel*float64(want)
}

func TestLoadMeter(t *testing.T) {
	c := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	m := newLoadMeter(time.Minute, c.now)
	if s := m.Snapshot(); s != (LoadSnapshot{Window: time.Minute}) {
		t.Fatalf("fresh meter: %+v", s)
	}
	// 1 ms … 100 ms, one each: p50 is 50 ms, p99 is 99 ms
	for i := 1; i <= 100; i++ {
		call(m, c, time.Duration(i)*time.Millisecond, nil)
	}
	call(m, c, 10*time.Second, errors.New("boom")) // an error: counted, not in the percentiles
	end := m.Start()                               // one left in flight
	s := m.Snapshot()
	if s.InFlight != 1 || s.Calls != 100 || s.Errors != 1 || s.WindowCalls != 100 {
		t.Fatalf("counts %+v, want 1 in flight, 100 calls, 1 error, 100 in the window", s)
	}
	if !near(s.P50, 50*time.Millisecond, 0.05) || !near(s.P99, 99*time.Millisecond, 0.05) {
		t.Errorf("p50 %v p99 %v, want 50 ms and 99 ms within 5%%", s.P50, s.P99)
	}
	end(nil)
	end(nil) // a second call does nothing
	if s := m.Snapshot(); s.InFlight != 0 || s.Calls != 101 {
		t.Errorf("after the last call ended: %+v", s)
	}

	// the window slides: a minute later only newer calls count
	c.add(30 * time.Second)
	for range 10 {
		call(m, c, 2*time.Second, nil)
	}
	c.add(40 * time.Second) // the first 101 calls are now older than a minute
	s = m.Snapshot()
	if s.WindowCalls != 10 || !near(s.P50, 2*time.Second, 0.05) || !near(s.P99, 2*time.Second, 0.05) {
		t.Errorf("after the window slid: %+v, want 10 calls of 2 s", s)
	}
	c.add(2 * time.Minute)
	if s := m.Snapshot(); s.WindowCalls != 0 || s.P50 != 0 || s.Calls != 111 {
		t.Errorf("after an idle window: %+v, want no window calls and 111 calls in all", s)
	}
}

func TestLoadMeterProto(t *testing.T) {
	s := LoadSnapshot{InFlight: 2, Calls: 7, Errors: 1, P50: 1500 * time.Microsecond, P99: 20 * time.Millisecond, Window: time.Minute, WindowCalls: 7}
	p := s.Proto()
	if p.GetInFlight() != 2 || p.GetCalls() != 7 || p.GetErrors() != 1 || p.GetP50Ms() != 1.5 || p.GetP99Ms() != 20 || p.GetWindowS() != 60 || p.GetWindowCalls() != 7 {
		t.Errorf("proto %v", p)
	}
}

func TestLoadMeterConcurrent(t *testing.T) {
	m := NewLoadMeter(0)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				end := m.Start()
				_ = m.Snapshot()
				end(nil)
			}
		}()
	}
	wg.Wait()
	if s := m.Snapshot(); s.Calls != 800 || s.InFlight != 0 || s.WindowCalls != 800 {
		t.Errorf("%+v, want 800 calls in the window, none in flight", s)
	}
}
