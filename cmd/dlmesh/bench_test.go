package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/kernels"
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

// TestBenchMeshCPU runs bench --mesh's path on the CPU with the tiny model: the monolith, then
// attnd and two expertd as processes of the built binary, one point; the mesh must give the
// monolith's argmax ids and report every figure.
func TestBenchMeshCPU(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts three processes; skipped with -short")
	}
	bin := buildBinary(t)
	var out bytes.Buffer
	err := runMeshBench(context.Background(), &out, meshOpts{dir: filepath.Join("..", "..", "models", "llada2-tiny-go"), backend: "cpu",
		kv: kernels.F32, act: kernels.F32, ctxs: []int{32}, batches: []int{2}, steps: 2, warmup: 1, blockLen: 32, groups: 2,
		asJSON: true, readGiB: 1.0 / 16, readReps: 1, startTimeout: time.Minute, exe: bin})
	if err != nil {
		t.Fatal(err)
	}
	var rows []meshRow
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1", len(rows))
	}
	r := rows[0]
	if r.MonoMs <= 0 || r.MonoGraphMs <= 0 || r.MeshMs <= 0 || r.AttndMs <= 0 || r.ExpertsMsPerLayer <= 0 || r.FloorMs <= 0 {
		t.Errorf("row %+v: want every time positive", r)
	}
	if math.Abs(r.XMono-r.MeshMs/r.MonoMs) > 1e-9 || r.Groups != 2 || r.Touched == 0 {
		t.Errorf("row %+v: inconsistent", r)
	}
	// Same weights, tokens and context: the groups' sums differ from the local one only in
	// float32 addition order.
	if r.ArgmaxEq < 0.95 {
		t.Errorf("mesh argmax agrees with the monolith on %.0f%% of the rows, want ≥ 95%%", 100*r.ArgmaxEq)
	}
}
