// Command dlmesh is the one binary of the project: the services (up, gateway, attnd, expertd),
// the in-process tools (inspect, tokenize, run, bench) and the client (generate).
//
// Flags map onto each package's Config here and only here. Nothing may import it; it imports
// everything. Each service's start-up reads in one function of serve.go.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/services"
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
	var logFormat, logLevel string
	root := &cobra.Command{
		Use:           "dlmesh",
		Short:         "Serve LLaDA2.x block-diffusion MoE models as a gRPC mesh",
		Version:       buildVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return setupLog(logFormat, logLevel)
		},
	}
	root.PersistentFlags().StringVar(&logFormat, "log-format", services.LogText, "log format on stderr: text or json")
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "least severe log level shown: debug, info, warn or error")
	root.SetVersionTemplate("dlmesh {{.Version}}\n")
	root.AddCommand(inspectCmd(), tokenizeCmd())
	for _, add := range extraCommands {
		root.AddCommand(add())
	}
	return root
}

// extraCommands is filled by the files of the other subcommands (init functions).
var extraCommands []func() *cobra.Command

// setupLog makes the --log-format and --log-level logger on stderr the default slog logger, with
// trace ids on the lines logged inside a traced span.
func setupLog(format, level string) error {
	lvl, err := services.ParseLogLevel(level)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	h, err := services.NewLogHandler(logOut, format, lvl)
	if err != nil {
		return fmt.Errorf("--log-format: %w", err)
	}
	slog.SetDefault(slog.New(h))
	return nil
}

// logOut is where the log goes: stderr, held back while a live view owns the terminal.
var logOut = &heldWriter{w: os.Stderr}

// heldWriter passes writes to w, except between hold and release, when it keeps them and writes
// them out at release (each slog record is one write, so lines stay whole).
type heldWriter struct {
	mu   sync.Mutex
	w    io.Writer
	held [][]byte
	hold bool
}

func (h *heldWriter) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hold {
		h.held = append(h.held, append([]byte(nil), p...))
		return len(p), nil
	}
	return h.w.Write(p)
}

// Hold keeps the writes until the returned release is called.
func (h *heldWriter) Hold() (release func()) {
	h.mu.Lock()
	h.hold = true
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.hold = false
		for _, p := range h.held {
			_, _ = h.w.Write(p)
		}
		h.held = nil
	}
}
