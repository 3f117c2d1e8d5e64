package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/model"
)

func inspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect [MODEL_DIR]",
		Short: "Summarise a checkpoint: config, parameter counts, tensor dtypes",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := ""
			if len(args) == 1 {
				dir = args[0]
			}
			dir, err := resolveModelDir(dir)
			if err != nil {
				return err
			}
			return inspect(cmd.OutOrStdout(), dir)
		},
	}
}

func inspect(w io.Writer, dir string) error {
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return err
	}
	ck, err := model.OpenCheckpoint(dir)
	if err != nil {
		return err
	}
	defer ck.Close()
	p := cfg.Params()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "model\t%s (%s)\n", dir, cfg.ModelType)
	fp, err := model.Fingerprint(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(tw, "fingerprint\t%s\n", fp)
	fmt.Fprintf(tw, "hidden / layers\t%d / %d (dense: first %d)\n", cfg.Hidden, cfg.Layers, cfg.FirstKDense)
	fmt.Fprintf(tw, "heads / kv heads / head dim\t%d / %d / %d (rotary dim %d, theta %g, qk-norm %v)\n",
		cfg.Heads, cfg.KVHeads, cfg.HeadDim, cfg.RotaryDim, cfg.RopeTheta, cfg.UseQKNorm)
	fmt.Fprintf(tw, "dense ffn\t%d\n", cfg.Intermediate)
	fmt.Fprintf(tw, "experts / top-k / shared\t%d / %d / %d (moe ffn %d)\n", cfg.Experts, cfg.TopK, cfg.SharedExperts, cfg.MoEIntermediate)
	fmt.Fprintf(tw, "router\t%s, groups %d keep %d, scale %g, normalised %v, expert bias %v\n",
		cfg.ScoreFunction, cfg.NGroup, cfg.TopKGroup, cfg.RoutedScale, cfg.NormTopK, cfg.ExpertBias)
	fmt.Fprintf(tw, "vocab\t%d\n", cfg.Vocab)
	fmt.Fprintf(tw, "\t\n")
	fmt.Fprintf(tw, "parameters\t%s\n", commas(p.Total))
	fmt.Fprintf(tw, "  attention part\t%s\n", commas(p.Attention))
	fmt.Fprintf(tw, "  routed experts\t%s (%s per expert)\n", commas(p.RoutedExperts), commas(p.PerExpert))
	fmt.Fprintf(tw, "  active per token\t%s\n", commas(p.ActivePerToken))
	fmt.Fprintf(tw, "  stored values\t%s (with the expert-bias vectors)\n", commas(p.StoredValues))
	tw.Flush()

	type row struct {
		n     int
		elems int64
		bytes int64
	}
	byType := map[string]*row{}
	var stored int64
	for _, name := range ck.Names() {
		ti, err := ck.Tensor(name)
		if err != nil {
			return err
		}
		k := ti.DType.String()
		r := byType[k]
		if r == nil {
			r = &row{}
			byType[k] = r
		}
		n := int64(1)
		for _, s := range ti.Shape {
			n *= int64(s)
		}
		r.n++
		r.elems += n
		r.bytes += int64(len(ti.Data))
		stored += n
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "dtype\ttensors\tvalues\tMiB\t")
	keys := make([]string, 0, len(byType))
	for k := range byType {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r := byType[k]
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.1f\t\n", k, r.n, commas(r.elems), float64(r.bytes)/(1<<20))
	}
	tw.Flush()
	if stored != p.StoredValues {
		fmt.Fprintf(w, "warning: the checkpoint stores %s values, the config implies %s\n", commas(stored), commas(p.StoredValues))
	}
	return nil
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
