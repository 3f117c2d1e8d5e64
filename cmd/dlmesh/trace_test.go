package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.opentelemetry.io/otel"
	"golang.org/x/net/html"

	"github.com/dlmesh/dlmesh/tracing"
)

// TestTraceHTMLFromUp runs `dlmesh up --trace-file F --exit PROMPT` in process, then
// `dlmesh trace --html OUT F`, and checks the page against the spans: one timeline row per
// step, one request with a bar per step, and the text report still printed.
func TestTraceHTMLFromUp(t *testing.T) {
	prev := otel.GetTracerProvider()
	t.Cleanup(func() { otel.SetTracerProvider(prev) }) // up installs its provider globally
	dir := t.TempDir()
	spansPath, htmlPath := filepath.Join(dir, "t.jsonl"), filepath.Join(dir, "report.html")
	up := upCmd()
	up.SetArgs([]string{"--model", filepath.Join("..", "..", "models", "llada2-tiny-go"), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--trace-file", spansPath, "--exit", "--json", "--gen", "8", "--block", "8", "func Reverse(s string) string {"})
	if err := up.Execute(); err != nil {
		t.Fatalf("up: %v", err)
	}
	spans, err := tracing.ReadSpans(spansPath)
	if err != nil {
		t.Fatal(err)
	}
	engineSteps, gatewaySteps := 0, 0
	for _, s := range spans {
		switch s.Name {
		case tracing.SpanEngineStep:
			engineSteps++
		case tracing.SpanGatewayStep:
			gatewaySteps++
		}
	}
	if engineSteps == 0 || gatewaySteps != engineSteps {
		t.Fatalf("%d engine steps, %d gateway steps: want as many of each, at least one", engineSteps, gatewaySteps)
	}

	var out, errOut bytes.Buffer
	tr := traceCmd()
	tr.SetOut(&out)
	tr.SetErr(&errOut)
	tr.SetArgs([]string{"--html", htmlPath, spansPath})
	if err := tr.Execute(); err != nil {
		t.Fatalf("trace --html: %v", err)
	}
	if !strings.Contains(out.String(), "where each step's time went") || !strings.Contains(errOut.String(), "wrote "+htmlPath) {
		t.Errorf("trace --html printed:\n%s\nstderr: %s", out.String(), errOut.String())
	}
	f, err := os.Open(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := html.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	count := func(tag, class string) int {
		n := 0
		var walk func(*html.Node)
		walk = func(x *html.Node) {
			if x.Type == html.ElementNode && x.Data == tag {
				for _, a := range x.Attr {
					if a.Key == "class" && strings.Contains(" "+a.Val+" ", " "+class+" ") {
						n++
					}
				}
			}
			for c := x.FirstChild; c != nil; c = c.NextSibling {
				walk(c)
			}
		}
		walk(doc)
		return n
	}
	if n := count("g", "row"); n != min(engineSteps, tracing.DefaultHTMLMaxSteps) {
		t.Errorf("%d timeline rows for %d steps", n, engineSteps)
	}
	if n := count("div", "request"); n != 1 {
		t.Errorf("%d request views, want 1", n)
	}
	if n := count("svg", "req"); n != 1 {
		t.Errorf("%d request charts, want 1", n)
	}
	if n := count("g", "bar"); n < gatewaySteps {
		t.Errorf("%d chart bars, want at least one per step (%d)", n, gatewaySteps)
	}

	// --quiet: the page only.
	out.Reset()
	tr = traceCmd()
	tr.SetOut(&out)
	tr.SetErr(&bytes.Buffer{})
	tr.SetArgs([]string{"--html", htmlPath, "--quiet", spansPath})
	if err := tr.Execute(); err != nil || out.Len() != 0 {
		t.Errorf("trace --quiet: %v, printed %q", err, out.String())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("files left in %s: %v", dir, ents)
	}
}

func TestTraceFlagErrors(t *testing.T) {
	spansPath := filepath.Join("..", "..", "tracing", "testdata", "mesh.jsonl")
	out := filepath.Join(t.TempDir(), "x.html")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"quiet without html", []string{"--quiet", spansPath}, "--quiet without --html"},
		{"max-steps 0", []string{"--html", out, "--max-steps", "0", spansPath}, "--max-steps 0"},
		{"max-requests too many", []string{"--html", out, "--max-requests", "1000", spansPath}, "--max-requests 1000"},
		{"html in a missing dir", []string{"--html", filepath.Join(t.TempDir(), "no", "x.html"), spansPath}, "html report"},
		{"missing span file", []string{filepath.Join(t.TempDir(), "missing.jsonl")}, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr := traceCmd()
			tr.SetOut(&bytes.Buffer{})
			tr.SetErr(&bytes.Buffer{})
			tr.SetArgs(tt.args)
			if err := tr.Execute(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("trace %v: %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}
