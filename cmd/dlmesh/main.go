// Command dlmesh is the one binary of the project: the services (up, gateway, attnd, expertd),
// the in-process tools (inspect, tokenize, run, bench) and the client (generate).
//
// Flags map onto each package's Config here and only here. Nothing may import it; it imports
// everything. Each service's start-up reads in one function of serve.go.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// defaultModelDir is the bundled tiny model, relative to the repository root; modelDir also
// looks next to the executable and in the module source tree so `go run` works from anywhere.
const defaultModelDir = "models/llada2-tiny-go"

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "dlmesh:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "dlmesh",
		Short:         "Serve LLaDA2.x block-diffusion MoE models as a gRPC mesh",
		Version:       buildVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("dlmesh {{.Version}}\n")
	root.AddCommand(inspectCmd(), tokenizeCmd())
	for _, add := range extraCommands {
		root.AddCommand(add())
	}
	return root
}

// extraCommands is filled by the files of the other subcommands (init functions).
var extraCommands []func() *cobra.Command
