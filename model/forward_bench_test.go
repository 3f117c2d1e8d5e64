package model_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/dlmesh/dlmesh/model"
)

// BenchmarkStepBlock: one denoising step of one 32-token block over a cache of ctxLen committed
// positions, on the bundled tiny model and the CPU backend.
func BenchmarkStepBlock(b *testing.B) {
	m := loadTiny(b, fullOpts())
	ctx := context.Background()
	for _, ctxLen := range []int{0, 512} {
		b.Run(fmt.Sprintf("ctx=%d", ctxLen), func(b *testing.B) {
			cache, err := m.NewCache(ctxLen + 32)
			if err != nil {
				b.Fatal(err)
			}
			defer cache.Free()
			if ctxLen > 0 {
				prefix := make([]int32, ctxLen)
				for i := range prefix {
					prefix[i] = int32(i*31%8000 + 1)
				}
				if _, err := m.Step(ctx, []model.StepSeq{{Cache: cache, Tokens: prefix, OutRows: 1, TopK: 1}}, 32, model.StepOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			block := make([]int32, 32)
			for i := range block {
				block[i] = 8190 // <|mask|>
			}
			seq := []model.StepSeq{{Cache: cache, Pos: ctxLen, Tokens: block, OutRows: 32, TopK: 1}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := m.Step(ctx, seq, 32, model.StepOptions{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/step")
		})
	}
}
