package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
)

func init() { extraCommands = append(extraCommands, benchCmd) }

type benchRow struct {
	Backend  string  `json:"backend"`
	Shape    string  `json:"shape"`
	Ctx      int     `json:"ctx"`
	Batch    int     `json:"batch"`
	Graph    bool    `json:"graph"`
	KV       string  `json:"kv_dtype"`
	Act      string  `json:"expert_act_dtype"`
	Steps    int     `json:"steps"`
	MedianMs float64 `json:"median_ms"`
	P10Ms    float64 `json:"p10_ms"`
	P90Ms    float64 `json:"p90_ms"`
	TokPerS  float64 `json:"block_tokens_per_s"`
	// The floor: what the step must read (the routed experts it touched, the other weights, the
	// KV cache of its context) at the read rate measured in the same run.
	Touched  int     `json:"experts_touched"`
	Possible int     `json:"experts_possible"`
	ReadGB   float64 `json:"read_gb"`
	ReadGBps float64 `json:"read_gb_per_s,omitempty"`
	FloorMs  float64 `json:"floor_ms,omitempty"`
	XFloor   float64 `json:"x_floor,omitempty"`

	PerLayer []int `json:"experts_touched_per_moe_layer"` // distinct experts chosen in each MoE layer
	block    int   // rows per sequence
}

func benchCmd() *cobra.Command {
	var (
		dir, shape, backend, ctxs, batches string
		kvs, acts                          string
		random, noGraph, asJSON, kvBF16    bool
		steps, warmup, blockLen            int
		readGiB                            float64
		readReps                           int
		mesh, wireBF16                     bool
		groups                             int
		startTimeout                       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "bench [--shape tiny|mini|flash] [--random-weights] [--backend cpu|cuda] [--ctx 512,4096] [--batch 1,8,32]",
		Short: "Time one denoising step of one 32-token block per sequence at given contexts and batch sizes",
		Long: `Times model steps: every sequence of the batch has ctx committed positions in its KV cache
and runs one 32-token block against it (one denoising step). Reports the median over --steps
timed steps (after --warmup), replayed as one CUDA graph per step unless --no-graph.

--shape mini|flash with --random-weights builds the LLaDA2.x-mini/flash shapes with random bf16
weights generated on the device (no checkpoint needed); --shape tiny (default) uses the bundled
model's checkpoint, or --model DIR.

--kv-dtype and --expert-act take comma-separated lists (f32, bf16) so one run compares them:
a bf16 KV cache halves the attention reads (CUDA); bf16 expert activations round the routed
experts' inputs once, as the dense bf16 GEMMs do, instead of the float32-exact hi+lo split.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cl, err := parseInts("--ctx", ctxs)
			if err != nil {
				return err
			}
			bl, err := parseInts("--batch", batches)
			if err != nil {
				return err
			}
			if kvBF16 {
				kvs = "bf16"
			}
			kvl, err := parseDTypes("--kv-dtype", kvs)
			if err != nil {
				return err
			}
			actl, err := parseDTypes("--expert-act", acts)
			if err != nil {
				return err
			}
			if mesh {
				if len(kvl) != 1 || len(actl) != 1 {
					return fmt.Errorf("--mesh: want one --kv-dtype and one --expert-act, not %q and %q", kvs, acts)
				}
				if random {
					return fmt.Errorf("--mesh --random-weights: the services load a checkpoint; write a random one with dlmesh randckpt --shape %s --out DIR, then --model DIR", shape)
				}
				d := dir
				if d == "" && shape != "tiny" {
					return fmt.Errorf("--mesh --shape %s: want --model DIR (write one with dlmesh randckpt --shape %s)", shape, shape)
				}
				if d, err = resolveModelDir(d); err != nil {
					return err
				}
				return runMeshBench(ctx, cmd.OutOrStdout(), meshOpts{dir: d, backend: backend, kv: kvl[0], act: actl[0], ctxs: cl, batches: bl,
					steps: steps, warmup: warmup, blockLen: blockLen, groups: groups, wireBF16: wireBF16, asJSON: asJSON,
					readGiB: readGiB, readReps: readReps, startTimeout: startTimeout})
			}
			be, err := newBackend(backend)
			if err != nil {
				return err
			}
			defer be.Close()
			readRate, err := measureReadRate(be, readGiB, readReps)
			if err != nil {
				return err
			}
			if readRate > 0 {
				fmt.Fprintf(os.Stderr, "read rate of %s: %.1f GB/s (streaming read, %.2f GiB × %d)\n", be.Name(), readRate/1e9, readBufGiB(be, readGiB), readReps)
			}
			var m *model.Model
			switch {
			case shape == "tiny" && !random:
				d, err := resolveModelDir(dir)
				if err != nil {
					return err
				}
				if m, err = loadModel(ctx, d, be, true, nil); err != nil {
					return err
				}
			default:
				var cfg *model.Config
				switch shape {
				case "mini":
					cfg = model.MiniConfig()
				case "flash":
					cfg = model.FlashConfig()
				case "tiny":
					d, err := resolveModelDir(dir)
					if err != nil {
						return err
					}
					if cfg, err = model.LoadConfig(d); err != nil {
						return err
					}
				default:
					return fmt.Errorf("--shape %q: want tiny, mini or flash", shape)
				}
				if !random {
					return fmt.Errorf("--shape %s needs --random-weights (or use --model DIR with a real checkpoint)", shape)
				}
				fmt.Fprintf(os.Stderr, "building %s with random weights on %s...\n", shape, be.Name())
				t0 := time.Now()
				if m, err = model.NewRandom(cfg, be, model.LoadOptions{Attention: true, Experts: model.AllExperts(cfg.Experts)}, 1); err != nil {
					return err
				}
				if err := be.Sync(); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "  done in %.1f s\n", time.Since(t0).Seconds())
			}
			defer m.Close()
			var rows []benchRow
			for _, kv := range kvl {
				if err := m.SetKVDType(kv); err != nil {
					return fmt.Errorf("--kv-dtype %v: %w", kv, err)
				}
				for _, act := range actl {
					if err := m.SetExpertActDType(act); err != nil {
						return err
					}
					for _, c := range cl {
						for _, b := range bl {
							r, err := benchStep(ctx, m, shape, c, b, blockLen, steps, warmup, !noGraph)
							if err != nil {
								return fmt.Errorf("kv %v, expert activations %v, ctx %d, batch %d: %w", kv, act, c, b, err)
							}
							r.KV, r.Act = strings.ToLower(kv.String()), strings.ToLower(act.String())
							if err := r.setFloor(m.Cfg, kv, readRate); err != nil {
								return err
							}
							rows = append(rows, r)
							if !asJSON {
								fmt.Fprintf(os.Stderr, "  kv %s act %s ctx %d batch %d: %.2f ms (floor %.2f ms, %.2f×)\n", r.KV, r.Act, c, b, r.MedianMs, r.FloorMs, r.XFloor)
							}
						}
					}
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(rows)
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "backend\tshape\tkv\tact\tctx\tbatch\tgraph\tsteps\tmedian ms\tp10 ms\tp90 ms\tblock tok/s\texperts\tread GB\tGB/s\tfloor ms\t× floor\t")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%v\t%d\t%.2f\t%.2f\t%.2f\t%.0f\t%d/%d\t%.2f\t%.0f\t%.2f\t%.2f\t\n", r.Backend, r.Shape, r.KV, r.Act, r.Ctx, r.Batch, r.Graph, r.Steps, r.MedianMs, r.P10Ms, r.P90Ms, r.TokPerS,
					r.Touched, r.Possible, r.ReadGB, r.ReadGBps, r.FloorMs, r.XFloor)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "model", "", "model directory for --shape tiny (default: the bundled model)")
	f.StringVar(&shape, "shape", "tiny", "tiny (bundled), mini (16B) or flash (100B)")
	f.BoolVar(&random, "random-weights", false, "random bf16 weights instead of a checkpoint")
	f.StringVar(&backend, "backend", "cpu", "cpu or cuda[:N]")
	f.StringVar(&ctxs, "ctx", "512", "committed context lengths, comma-separated")
	f.StringVar(&batches, "batch", "1", "batch sizes, comma-separated")
	f.IntVar(&steps, "steps", 20, "timed steps per point")
	f.IntVar(&warmup, "warmup", 3, "untimed steps first")
	f.IntVar(&blockLen, "block", 32, "block length")
	f.BoolVar(&noGraph, "no-graph", false, "do not capture the step as a CUDA graph")
	f.BoolVar(&asJSON, "json", false, "print the rows as JSON")
	f.BoolVar(&kvBF16, "kv-bf16", false, "same as --kv-dtype bf16")
	f.StringVar(&kvs, "kv-dtype", "f32", "KV cache element types to time, comma-separated: f32, bf16 (CUDA)")
	f.Float64Var(&readGiB, "read-gib", 0, "buffer of the read-rate measurement in GiB (default 4 on cuda, 1 on cpu; 0 with --read-reps 0: no floor)")
	f.IntVar(&readReps, "read-reps", 10, "timed passes of the read-rate measurement (0: skip it, no floor)")
	f.BoolVar(&mesh, "mesh", false, "time the step through attnd and --groups expertd started as processes on --backend, against the monolith, on --model DIR")
	f.IntVar(&groups, "groups", 2, "with --mesh: expertd processes, one expert group each")
	f.BoolVar(&wireBF16, "wire-bf16", false, "with --mesh: hidden rows travel to the experts as bf16")
	f.DurationVar(&startTimeout, "mesh-start-timeout", 5*time.Minute, "with --mesh: how long a service may take to load and serve")
	f.StringVar(&acts, "expert-act", "f32", "routed-expert activation precisions to time, comma-separated: f32 (exact), bf16 (CUDA)")
	return cmd
}

// parseDTypes parses a comma-separated list of f32/bf16.
func parseDTypes(flag, s string) ([]kernels.DType, error) {
	var out []kernels.DType
	for _, p := range strings.Split(s, ",") {
		switch strings.ToLower(strings.TrimSpace(p)) {
		case "f32", "fp32", "float32":
			out = append(out, kernels.F32)
		case "bf16", "bfloat16":
			out = append(out, kernels.BF16)
		default:
			return nil, fmt.Errorf("%s %q: want comma-separated f32 or bf16", flag, s)
		}
	}
	return out, nil
}

func parseInts(flag, s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s %q: want comma-separated non-negative integers", flag, s)
		}
		out = append(out, n)
	}
	return out, nil
}

func benchStep(ctx context.Context, m *model.Model, shape string, ctxLen, batch, blockLen, steps, warmup int, graph bool) (benchRow, error) {
	be := m.Be
	seqs := make([]model.StepSeq, batch)
	for i := range seqs {
		c, err := m.NewCache(ctxLen + blockLen)
		if err != nil {
			return benchRow{}, err
		}
		defer c.Free()
		if err := fillContext(ctx, m, c, ctxLen, blockLen, uint64(i)); err != nil {
			return benchRow{}, err
		}
		block := make([]int32, blockLen)
		for j := range block {
			block[j] = int32((i*131 + j*17) % m.Cfg.Vocab)
		}
		seqs[i] = model.StepSeq{Cache: c, Pos: ctxLen, Tokens: block, OutRows: blockLen, TopK: 1}
	}
	// One untimed step counts the experts the router touches (the same tokens and context as
	// the timed steps, so the same choices).
	tc := &touchCounter{inner: model.LocalExperts{M: m}, be: be, moe: m.Cfg.MoELayers()}
	if _, err := m.Step(ctx, seqs, blockLen, model.StepOptions{Experts: tc}); err != nil {
		return benchRow{}, fmt.Errorf("counting the experts touched: %w", err)
	}
	touched := tc.counts()
	p, err := m.Prepare(seqs, blockLen)
	if err != nil {
		return benchRow{}, err
	}
	defer p.Close()
	captured := false
	if graph {
		if captured, err = p.Capture(ctx); err != nil {
			return benchRow{}, err
		}
	}
	for i := 0; i < warmup; i++ {
		if _, err := p.Run(ctx); err != nil {
			return benchRow{}, err
		}
	}
	ms := make([]float64, steps)
	for i := range ms {
		t0 := time.Now()
		if _, err := p.Run(ctx); err != nil {
			return benchRow{}, err
		}
		ms[i] = float64(time.Since(t0).Microseconds()) / 1000
	}
	slices.Sort(ms)
	q := func(f float64) float64 { return ms[min(len(ms)-1, int(f*float64(len(ms))))] }
	med := q(0.5)
	return benchRow{Backend: be.Name(), Shape: shape, Ctx: ctxLen, Batch: batch, Graph: captured, Steps: steps,
		MedianMs: med, P10Ms: q(0.1), P90Ms: q(0.9), TokPerS: float64(batch*blockLen) / (med / 1000), PerLayer: touched, block: blockLen}, nil
}

// fillContext gives the cache ctxLen committed positions: random K/V written in place when the
// backend can (the values do not change a step's time), else a real prefill.
func fillContext(ctx context.Context, m *model.Model, c *model.Cache, ctxLen, blockLen int, seed uint64) error {
	if ctxLen == 0 {
		return nil
	}
	if r, ok := m.Be.(kernels.Randomizer); ok {
		if err := r.FillRandom(c.T, seed+1000, 1); err != nil {
			return err
		}
		c.Len = ctxLen
		return nil
	}
	for lo := 0; lo < ctxLen; lo += 512 {
		hi := min(lo+512, ctxLen)
		toks := make([]int32, hi-lo)
		for i := range toks {
			toks[i] = int32((lo + i*31) % m.Cfg.Vocab)
		}
		if _, err := m.Step(ctx, []model.StepSeq{{Cache: c, Pos: lo, Tokens: toks, OutRows: 1, TopK: 1}}, blockLen, model.StepOptions{}); err != nil {
			return err
		}
	}
	return nil
}
