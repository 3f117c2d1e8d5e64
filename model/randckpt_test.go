package model

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
)

// TestCheckpointTensorsMatchTiny: the tensor list names and shapes every tensor of the bundled
// tiny checkpoint, and nothing else.
func TestCheckpointTensorsMatchTiny(t *testing.T) {
	c, err := LoadConfig(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := OpenCheckpoint(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	ts := c.CheckpointTensors()
	if got, want := sortedNames(ts), ck.Names(); !slices.Equal(got, want) {
		t.Fatalf("tensor names differ from the bundled checkpoint:\n got %d %v\nwant %d %v", len(got), got, len(want), want)
	}
	for _, tt := range ts {
		info, err := ck.Tensor(tt.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(info.Shape, tt.Shape) {
			t.Errorf("%s: shape %v, the checkpoint has %v", tt.Name, tt.Shape, info.Shape)
		}
	}
}

// TestCheckpointTensorsMini: the mini shape's list holds every stored value of Params.
func TestCheckpointTensorsMini(t *testing.T) {
	c := MiniConfig()
	var n int64
	for _, tt := range c.CheckpointTensors() {
		n += tt.Bytes() / int64(tt.DType.Size())
	}
	if want := c.Params().StoredValues; n != want {
		t.Errorf("%d values listed, Params says %d", n, want)
	}
}

// TestWriteRandomCheckpointTiny writes a random tiny checkpoint in several shards, loads it
// split (attention part, then half the experts), checks shapes and runs one step.
func TestWriteRandomCheckpointTiny(t *testing.T) {
	cfgJSON, err := os.ReadFile(filepath.Join(tinyModelDir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(cfgJSON)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var last, total int64
	err = WriteRandomCheckpoint(context.Background(), dir, c, cfgJSON, 7, 8<<20, func(d, tot int64) { last, total = d, tot })
	if err != nil {
		t.Fatal(err)
	}
	if last != total || total == 0 {
		t.Errorf("progress ended at %d of %d bytes", last, total)
	}
	shards, _ := filepath.Glob(filepath.Join(dir, "model-*-of-*.safetensors"))
	if len(shards) < 3 {
		t.Errorf("%d shards at 8 MiB each, want at least 3 for %d bytes", len(shards), total)
	}
	be := cpu.New()
	m, err := Load(context.Background(), dir, be, LoadOptions{Attention: true, Experts: AllExperts(c.Experts)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if s := m.W.Embed.Shape; !slices.Equal(s, []int{c.Vocab, c.Hidden}) {
		t.Errorf("embedding %v", s)
	}
	l := c.MoELayers()[0]
	if s := m.Experts.Layers[l].Experts[3].GateUp.Shape; !slices.Equal(s, []int{2 * c.MoEIntermediate, c.Hidden}) {
		t.Errorf("expert gate_up %v", s)
	}
	// The values: uniform in [-scale, scale), not all equal, mean near 0.
	ck, err := OpenCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	info, err := ck.Tensor("lm_head.weight")
	if err != nil {
		t.Fatal(err)
	}
	lim, sum := float64(scaleFor(c.Hidden)), 0.0
	var distinct = map[uint16]bool{}
	for i := 0; i+1 < len(info.Data); i += 2 {
		b := uint16(info.Data[i]) | uint16(info.Data[i+1])<<8
		v := float64(kernels.BF16ToF32(b))
		if math.Abs(v) > lim*1.01 {
			t.Fatalf("lm_head value %v outside ±%v", v, lim)
		}
		sum += v
		distinct[b] = true
	}
	if n := len(info.Data) / 2; math.Abs(sum/float64(n)) > lim/50 || len(distinct) < 1000 {
		t.Errorf("lm_head mean %v over %d values, %d distinct: want near 0 and varied", sum/float64(n), n, len(distinct))
	}
	c2 := newCacheForTest(t, m, 64)
	out, err := m.Step(context.Background(), []StepSeq{{Cache: c2, Pos: 0, Tokens: []int32{1, 2, 3, 4, 5, 6, 7, 8}, OutRows: 8, TopK: 1}}, 32, StepOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for r, lse := range out[0].LSE {
		if math.IsNaN(float64(lse)) || math.IsInf(float64(lse), 0) || out[0].IDs[r] < 0 || int(out[0].IDs[r]) >= c.Vocab {
			t.Errorf("row %d: id %d lse %v", r, out[0].IDs[r], lse)
		}
	}
	// Same seed, same bytes; the config must match the shape.
	if err := WriteRandomCheckpoint(context.Background(), t.TempDir(), MiniConfig(), cfgJSON, 7, 8<<20, nil); err == nil || !strings.Contains(err.Error(), "not the shape") {
		t.Errorf("mini shape with the tiny config.json: %v, want a shape error", err)
	}
}

func newCacheForTest(tb testing.TB, m *Model, capLen int) *Cache {
	tb.Helper()
	c, err := m.NewCache(capLen)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Free)
	return c
}

func BenchmarkFillUniformBF16(b *testing.B) {
	buf := make([]byte, 2*randChunk)
	tab := uniformTable(0.03)
	b.SetBytes(int64(len(buf)))
	for i := 0; b.Loop(); i++ {
		fillUniformBF16(buf, uint64(i), tab)
	}
}

// TestMiniConfigFile: testdata's real LLaDA2.x-mini config.json is the MiniConfig shape, so a
// random checkpoint written from it has the tensors the mini benchmarks assume.
func TestMiniConfigFile(t *testing.T) {
	c, err := LoadConfig(filepath.Join("..", "testdata", "llada2-mini"))
	if err != nil {
		t.Fatal(err)
	}
	m := MiniConfig()
	if got, want := c.Params(), m.Params(); got != want {
		t.Errorf("params of testdata/llada2-mini %+v, MiniConfig %+v", got, want)
	}
	if c.RotaryDim != m.RotaryDim || c.NGroup != m.NGroup || c.TopKGroup != m.TopKGroup || c.TopK != m.TopK {
		t.Errorf("config %+v differs from MiniConfig %+v", c, m)
	}
}
