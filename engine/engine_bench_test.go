package engine_test

import (
	"context"
	"sync"
	"testing"

	"github.com/dlmesh/dlmesh/engine"
)

// BenchmarkDecode: the three fixture prompts through the in-process engine per mode, one at a
// time (streams=1) and all at once (streams=3). Reports tokens/s and tokens per forward; S must
// show more tokens per forward than Q, and Q more than v20.
func BenchmarkDecode(b *testing.B) {
	f := loadFixture(b)
	for _, mode := range []string{"s", "q", "v20"} {
		var cases []genCase
		for _, c := range f.gen.Cases {
			if c.Mode == mode {
				cases = append(cases, c)
			}
		}
		for _, streams := range []int{1, 3} {
			b.Run("mode="+mode+"/streams="+string(rune('0'+streams)), func(b *testing.B) {
				e := engine.New(engine.Config{MaskID: f.gen.MaskID, EOSID: f.gen.EOSID, Vocab: f.m.Cfg.Vocab}, engine.NewLocalStepper(f.m), f.tok)
				defer e.Stop()
				var tokens, forwards int
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if streams == 1 {
						for _, c := range cases {
							r, err := e.Generate(context.Background(), request(b, c, "bench"), nil)
							if err != nil {
								b.Fatal(err)
							}
							tokens += len(r.IDs)
							forwards += r.Forwards
						}
						continue
					}
					var wg sync.WaitGroup
					var mu sync.Mutex
					for _, c := range cases {
						wg.Add(1)
						go func() {
							defer wg.Done()
							r, err := e.Generate(context.Background(), request(b, c, "bench"), nil)
							if err != nil {
								b.Error(err)
								return
							}
							mu.Lock()
							tokens += len(r.IDs)
							forwards += r.Forwards
							mu.Unlock()
						}()
					}
					wg.Wait()
				}
				b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tok/s")
				b.ReportMetric(float64(tokens)/float64(forwards), "tok/forward")
			})
		}
	}
}
