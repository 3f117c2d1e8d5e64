package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"path/filepath"
	"testing"

	"github.com/dlmesh/dlmesh/model"
)

// TestBenchFloorCPU runs dlmesh bench on the CPU with the tiny model end to end and checks each
// row's floor: the read rate measured in the run, the experts touched, the bytes and the ratio.
func TestBenchFloorCPU(t *testing.T) {
	dir := filepath.Join("..", "..", "models", "llada2-tiny-go")
	cmd := benchCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--model", dir, "--ctx", "0,40", "--batch", "1,2", "--steps", "2", "--warmup", "0",
		"--read-gib", "0.0625", "--read-reps", "1", "--json"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	var rows []benchRow
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 4 (2 contexts × 2 batches)", len(rows))
	}
	c, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	moe := len(c.MoELayers())
	for _, r := range rows {
		if r.ReadGBps <= 0 || r.FloorMs <= 0 || r.MedianMs <= 0 {
			t.Fatalf("row %+v: want a read rate, a floor and a time", r)
		}
		// 32 rows × top-4 of 16 experts touch at least 4 and at most 16 per layer.
		if r.Possible != moe*c.Experts || r.Touched < moe*c.TopK || r.Touched > r.Possible {
			t.Errorf("ctx %d batch %d: %d of %d experts touched, want within [%d, %d]", r.Ctx, r.Batch, r.Touched, r.Possible, moe*c.TopK, r.Possible)
		}
		sum := 0
		for _, n := range r.PerLayer {
			sum += n
		}
		if len(r.PerLayer) != moe || sum != r.Touched {
			t.Errorf("per layer %v: want %d layers summing to %d", r.PerLayer, moe, r.Touched)
		}
		sr, err := c.StepReadBytes(r.PerLayer, r.Batch*32, int64(r.Batch*r.Ctx), 0)
		if err != nil {
			t.Fatal(err)
		}
		if gb := float64(sr.Total()) / 1e9; math.Abs(gb-r.ReadGB) > 1e-9 {
			t.Errorf("ctx %d batch %d: %.6f GB read, want %.6f", r.Ctx, r.Batch, r.ReadGB, gb)
		}
		if want := r.ReadGB / r.ReadGBps * 1000; math.Abs(r.FloorMs-want) > 1e-6*want {
			t.Errorf("floor %v ms, want %v (bytes / rate)", r.FloorMs, want)
		}
		if want := r.MedianMs / r.FloorMs; math.Abs(r.XFloor-want) > 1e-9*want {
			t.Errorf("× floor %v, want %v", r.XFloor, want)
		}
	}
	// Same batch, more context: the same tokens route alike, so only the KV bytes grow.
	if kv := rows[2].ReadGB - rows[0].ReadGB; rows[2].Touched == rows[0].Touched && math.Abs(kv-float64(c.Layers*2*c.KVHeads*c.HeadDim*40*4)/1e9) > 1e-9 {
		t.Errorf("ctx 40 vs 0 at batch 1: %.6f GB more, want the KV cache of 40 positions", kv)
	}
}
