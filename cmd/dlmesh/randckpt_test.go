package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/model"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// TestRandckptTiny writes a random tiny checkpoint with the command and loads it as the services
// do: the tokenizer, the attention part alone, and a group of experts alone; one step runs.
func TestRandckptTiny(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ck")
	cmd := randckptCmd()
	cmd.SetArgs([]string{"--shape", "tiny", "--out", out, "--seed", "3", "--shard-gib", "0.01"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, err := tokenizer.Load(out); err != nil {
		t.Errorf("tokenizer of the random checkpoint: %v", err)
	}
	ctx := context.Background()
	attn, err := model.Load(ctx, out, cpu.New(), model.LoadOptions{Attention: true})
	if err != nil {
		t.Fatal(err)
	}
	defer attn.Close()
	ex, err := model.Load(ctx, out, cpu.New(), model.LoadOptions{Experts: []int{0, 1, 2, 3, 4, 5, 6, 7}})
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	if !slices.Equal(ex.Experts.IDs, []int{0, 1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("experts held %v", ex.Experts.IDs)
	}
	c, err := attn.NewCache(64)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free()
	if _, err := attn.Step(ctx, []model.StepSeq{{Cache: c, Tokens: []int32{5, 6, 7}, OutRows: 1}}, 32, model.StepOptions{Experts: model.LocalExperts{M: ex}, Allowed: allowed(16, 8)}); err != nil {
		t.Fatal(err)
	}
	bad := randckptCmd()
	bad.SetArgs([]string{"--shape", "huge", "--out", out})
	if err := bad.ExecuteContext(ctx); err == nil || !strings.Contains(err.Error(), "--shape") {
		t.Errorf("--shape huge: %v, want an error naming --shape", err)
	}
}

func allowed(n, lo int) []bool {
	a := make([]bool, n)
	for i := range lo {
		a[i] = true
	}
	return a
}
