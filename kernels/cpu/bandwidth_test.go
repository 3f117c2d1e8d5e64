package cpu

import (
	"strings"
	"testing"
)

func TestSumWords(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 64, 1001} {
		p := make([]uint64, n)
		var want uint64
		for i := range p {
			p[i] = uint64(i*i + 3)
			want += p[i]
		}
		if got := sumWords(p); got != want {
			t.Errorf("n=%d: sumWords = %d, want %d", n, got, want)
		}
	}
}

func TestReadBandwidth(t *testing.T) {
	b := New(WithWorkers(2))
	r, err := b.ReadBandwidth(16<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	// Any host streams 16 MiB faster than 1 MB/s (even under -race on a loaded machine) and
	// slower than 10 TB/s.
	if r < 1e6 || r > 1e13 {
		t.Errorf("read bandwidth %.3g B/s: want within [1e6, 1e13]", r)
	}
	for _, c := range []struct {
		n    int64
		reps int
		want string
	}{{1000, 1, "multiple of 64"}, {1 << 19, 1, "at least 1 MiB"}, {1 << 20, 0, "reps 0"}} {
		if _, err := b.ReadBandwidth(c.n, c.reps); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ReadBandwidth(%d, %d) error %v, want one saying %q", c.n, c.reps, err, c.want)
		}
	}
}
