package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/model"
)

func init() { extraCommands = append(extraCommands, randckptCmd) }

// shapeDirs names, per --shape, the folder (from the repository root) whose config.json and
// tokenizer files a random checkpoint takes: the real LLaDA2.x-mini config, or the bundled tiny
// model's.
var shapeDirs = map[string]string{
	"mini": filepath.Join("testdata", "llada2-mini"),
	"tiny": defaultModelDir,
}

// tokenizerFiles are copied next to a random checkpoint so the services can load it.
var tokenizerFiles = []string{"tokenizer.json", "tokenizer_config.json"}

func randckptCmd() *cobra.Command {
	var (
		shape, out, from string
		seed             uint64
		shardGiB         float64
	)
	cmd := &cobra.Command{
		Use:   "randckpt --shape mini|tiny --out DIR [--seed N]",
		Short: "Write a checkpoint with random bf16 weights in the Hugging Face layout",
		Long: `Writes DIR/config.json (the shape's config: the real LLaDA2.x-mini config.json for mini,
the bundled model's for tiny), the tokenizer files, sharded bf16 safetensors with random
weights (uniform, variance 1/fan-in, as bench --random-weights) and model.safetensors.index.json.
attnd, expertd, run and bench then load DIR with --model like a real checkpoint (the mini shape
is 32 GB). The weights depend only on --seed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out: want the directory to write")
			}
			src := from
			if src == "" {
				rel, ok := shapeDirs[shape]
				if !ok {
					return fmt.Errorf("--shape %q: want mini or tiny (or --from DIR)", shape)
				}
				var err error
				if src, err = findRepoDir(rel); err != nil {
					return err
				}
			}
			cfgJSON, err := os.ReadFile(filepath.Join(src, "config.json"))
			if err != nil {
				return fmt.Errorf("randckpt: %w", err)
			}
			cfg, err := model.ParseConfig(cfgJSON)
			if err != nil {
				return err
			}
			if shardGiB <= 0 {
				return fmt.Errorf("--shard-gib %v: want > 0", shardGiB)
			}
			var total int64
			for _, t := range cfg.CheckpointTensors() {
				total += t.Bytes()
			}
			fmt.Fprintf(os.Stderr, "writing %s: %.2f GB of random weights (%s, seed %d)...\n", out, float64(total)/1e9, src, seed)
			t0 := time.Now()
			last := time.Now()
			err = model.WriteRandomCheckpoint(cmd.Context(), out, cfg, cfgJSON, seed, int64(shardGiB*(1<<30)), func(done, total int64) {
				if time.Since(last) > 5*time.Second {
					last = time.Now()
					fmt.Fprintf(os.Stderr, "  %.1f of %.1f GB\n", float64(done)/1e9, float64(total)/1e9)
				}
			})
			if err != nil {
				return err
			}
			for _, f := range tokenizerFiles {
				if err := copyFile(filepath.Join(src, f), filepath.Join(out, f)); err != nil {
					return fmt.Errorf("randckpt: tokenizer: %w", err)
				}
			}
			s := time.Since(t0).Seconds()
			fmt.Fprintf(os.Stderr, "  done in %.1f s (%.2f GB/s)\n", s, float64(total)/1e9/s)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&shape, "shape", "tiny", "mini (LLaDA2.x-mini, 16B) or tiny (the bundled model's shape)")
	f.StringVar(&out, "out", "", "directory to write")
	f.StringVar(&from, "from", "", "take config.json and the tokenizer from this directory instead of the shape's")
	f.Uint64Var(&seed, "seed", 1, "random seed")
	f.Float64Var(&shardGiB, "shard-gib", 4, "shard size in GiB")
	return cmd
}

// findRepoDir finds rel (a path from the repository root) in the working directory, next to the
// executable or one folder up, or in the source tree this binary was built from.
func findRepoDir(rel string) (string, error) {
	cands := []string{rel}
	if exe, err := os.Executable(); err == nil {
		d := filepath.Dir(exe)
		cands = append(cands, filepath.Join(d, rel), filepath.Join(d, "..", rel))
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		cands = append(cands, filepath.Join(filepath.Dir(file), "..", "..", rel))
	}
	for _, c := range cands {
		if _, err := os.Stat(filepath.Join(c, "config.json")); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s not found (looked in %v); pass --from DIR", rel, cands)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
