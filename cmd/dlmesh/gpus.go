package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/kernels/cuda/nvml"
)

func init() { extraCommands = append(extraCommands, gpusCmd) }

func gpusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "gpus",
		Short: "List the GPUs NVML sees: memory, utilisation, temperature, power",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := nvml.Init(); err != nil {
				return fmt.Errorf("no GPU telemetry: %w", err)
			}
			defer nvml.Shutdown()
			gpus, err := nvml.Devices()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(gpus)
			}
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "index\tname\tuuid\tmem used/total MiB\tutil %\ttemp C\tpower W")
			for _, g := range gpus {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d/%d\t%d\t%d\t%.1f\n", g.Index, g.Name, g.UUID, g.MemoryUsedMiB, g.MemoryTotalMiB, g.UtilPercent, g.TemperatureC, g.PowerW)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
