package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/tracing"
)

func init() { extraCommands = append(extraCommands, traceCmd) }

func traceCmd() *cobra.Command {
	var (
		htmlPath string
		quiet    bool
		opts     tracing.HTMLOptions
	)
	cmd := &cobra.Command{
		Use:   "trace [--html OUT.html] [--quiet] FILE",
		Short: "Latency analysis of a --trace-file: time per span name and where each step's time went, as text and/or an HTML/SVG report",
		Long: `trace reads the JSON-lines span file that --trace-file writes and prints, per span name,
count, total, mean, p50, p90, p95 and max; what the children of each step took; and how each
step's time splits into expert fan-out, attention / LM head and network / queue.

--html OUT.html also writes the same figures as one self-contained HTML page with inline SVG (no
script, nothing fetched): a timeline of the slowest --max-steps steps with their nested spans,
a histogram of step durations, the per-step split as stacked bars, and per request (the slowest
--max-requests) the latency of each of its steps. With the default limits the page stays under
4 MB however long the trace.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if htmlPath == "" && quiet {
				return errors.New("--quiet without --html would print nothing")
			}
			if opts.MaxSteps < 1 || opts.MaxSteps > tracing.MaxHTMLSteps {
				return fmt.Errorf("--max-steps %d: want 1 to %d", opts.MaxSteps, tracing.MaxHTMLSteps)
			}
			if opts.MaxRequests < 1 || opts.MaxRequests > tracing.MaxHTMLRequests {
				return fmt.Errorf("--max-requests %d: want 1 to %d", opts.MaxRequests, tracing.MaxHTMLRequests)
			}
			spans, err := tracing.ReadSpans(args[0])
			if err != nil {
				return err
			}
			if len(spans) == 0 {
				return fmt.Errorf("%s: no spans (run a service with --trace-file %s first)", args[0], args[0])
			}
			if !quiet {
				if err := tracing.WriteReport(cmd.OutOrStdout(), spans); err != nil {
					return err
				}
			}
			if htmlPath == "" {
				return nil
			}
			opts.Source = args[0]
			t0 := time.Now()
			if err := writeHTML(htmlPath, spans, opts); err != nil {
				return err
			}
			fi, err := os.Stat(htmlPath)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (%d KiB, %d spans, %v)\n", htmlPath, (fi.Size()+1023)/1024, len(spans), time.Since(t0).Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&htmlPath, "html", "", "also write the report as one self-contained HTML/SVG file")
	f.BoolVar(&quiet, "quiet", false, "with --html: do not print the text report")
	f.IntVar(&opts.MaxSteps, "max-steps", tracing.DefaultHTMLMaxSteps, fmt.Sprintf("with --html: steps drawn in the timeline, the slowest when there are more (1-%d)", tracing.MaxHTMLSteps))
	f.IntVar(&opts.MaxRequests, "max-requests", tracing.DefaultHTMLMaxRequests, fmt.Sprintf("with --html: requests charted, the slowest when there are more (1-%d)", tracing.MaxHTMLRequests))
	return cmd
}

// writeHTML writes the report to path through a temporary file, so a failed run leaves no
// half-written report behind.
func writeHTML(path string, spans []tracing.Span, opts tracing.HTMLOptions) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".dlmesh-trace-*.html")
	if err != nil {
		return fmt.Errorf("html report: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w := bufio.NewWriterSize(tmp, 256<<10)
	if err := tracing.WriteHTML(w, spans, opts); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("html report: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("html report: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("html report: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("html report: %w", err)
	}
	return nil
}
