package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/tracing"
)

func init() { extraCommands = append(extraCommands, traceCmd) }

func traceCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "trace FILE",
		Short: "Latency analysis of a --trace-file: time per span name and where each step's time went",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spans, err := tracing.ReadSpans(args[0])
			if err != nil {
				return err
			}
			if len(spans) == 0 {
				return fmt.Errorf("%s: no spans (run a service with --trace-file %s first)", args[0], args[0])
			}
			return tracing.WriteReport(cmd.OutOrStdout(), spans)
		},
	}
}
