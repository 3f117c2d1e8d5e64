package tracing_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/mesh"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tracing"
)

var update = flag.Bool("update", false, "regenerate testdata/mesh.jsonl by running two requests through the in-process mesh")

// goldenTrace is a span file of the real system: the in-process mesh (gateway, attnd with two
// micro-batches, two expert groups) serving two concurrent short requests, traced to a file.
const goldenTrace = "testdata/mesh.jsonl"

var goldenOnce sync.Once

// goldenSpans reads goldenTrace, regenerating it first with -update.
func goldenSpans(tb testing.TB) []tracing.Span {
	tb.Helper()
	goldenOnce.Do(func() {
		if *update {
			if err := writeGoldenTrace(goldenTrace); err != nil {
				tb.Fatalf("regenerate %s: %v", goldenTrace, err)
			}
		}
	})
	spans, err := tracing.ReadSpans(goldenTrace)
	if err != nil {
		tb.Fatalf("%v (regenerate it with go test ./tracing/ -update)", err)
	}
	return spans
}

func writeGoldenTrace(path string) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tmp := filepath.Join(os.TempDir(), fmt.Sprintf("dlmesh-golden-%d.jsonl", os.Getpid()))
	defer os.Remove(tmp)
	// The global provider, as `dlmesh up --trace-file` installs it: the engine's spans use it.
	shutdown, err := tracing.Setup(ctx, tracing.Config{ServiceName: "dlmesh-up", File: tmp})
	if err != nil {
		return err
	}
	m, err := mesh.Up(ctx, mesh.Config{ModelDir: filepath.Join("..", "models", "llada2-tiny-go"), Listen: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	c, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		return err
	}
	// Few steps keep the file small: every masked position is unmasked at once, no editing.
	tauMask, editOff := 0.001, true
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, prompt := range []string{"func Reverse(s string) string {", "package main"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &pb.GenerateRequest{RequestId: fmt.Sprintf("golden-%d", i), Input: &pb.GenerateRequest_Prompt{Prompt: prompt},
				Params: &pb.DecodeParams{Mode: "s", TauMask: &tauMask, EditOff: &editOff, GenLength: 4, BlockLength: 4}}
			_, errs[i] = c.Generate(ctx, req, func(*pb.GenerateEvent) error { return nil })
		}()
	}
	wg.Wait()
	c.Close()
	if err := m.Close(); err != nil {
		return err
	}
	if err := shutdown(ctx); err != nil {
		return err
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
