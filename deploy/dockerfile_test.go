package deploy

import (
	"debug/elf"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// instruction is one Dockerfile instruction: its name, flags and arguments.
type instruction struct {
	name  string
	flags []string
	args  []string
	json  bool
	line  int
}

// stage is one FROM … [AS name] and the instructions after it.
type stage struct {
	base, name string
	ins        []instruction
}

func parseDockerfile(tb testing.TB) (args map[string]string, stages []stage) {
	tb.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		tb.Fatalf("Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		tb.Errorf("Dockerfile line %d: %s", w.Location.Start.Line, w.Short)
	}
	args = map[string]string{}
	for _, n := range res.AST.Children {
		in := instruction{name: strings.ToLower(n.Value), flags: n.Flags, json: n.Attributes["json"], line: n.StartLine}
		for a := n.Next; a != nil; a = a.Next {
			in.args = append(in.args, a.Value)
		}
		switch {
		case in.name == "from":
			s := stage{base: in.args[0]}
			if len(in.args) == 3 && strings.EqualFold(in.args[1], "as") {
				s.name = in.args[2]
			}
			stages = append(stages, s)
		case in.name == "arg" && len(stages) == 0:
			k, v, _ := strings.Cut(in.args[0], "=")
			args[k] = v
		case len(stages) == 0:
			tb.Fatalf("Dockerfile line %d: %s before FROM", in.line, in.name)
		default:
			stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
		}
	}
	if len(stages) < 2 {
		tb.Fatalf("Dockerfile: %d stages, want a build stage and a runtime stage", len(stages))
	}
	return args, stages
}

func (s stage) find(name string) []instruction {
	var out []instruction
	for _, in := range s.ins {
		if in.name == name {
			out = append(out, in)
		}
	}
	return out
}

// TestDockerfile: a golang build stage on the main module's Go version building ./cmd/dlmesh
// with CGO_ENABLED=0, and a distroless nonroot runtime stage that carries the binary and, beside
// it, the bundled model, with an exec-form ENTRYPOINT and a CMD that is `dlmesh up` listening
// on all interfaces with flags the binary has.
func TestDockerfile(t *testing.T) {
	args, stages := parseDockerfile(t)
	build, final := stages[0], stages[len(stages)-1]

	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := string(regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)[1])
	if args["GO_VERSION"] != goVersion {
		t.Errorf("ARG GO_VERSION=%s, want go.mod's go %s", args["GO_VERSION"], goVersion)
	}
	if !strings.HasPrefix(build.base, "golang:${GO_VERSION}") || build.name == "" {
		t.Errorf("build stage FROM %s AS %q, want golang:${GO_VERSION}… AS <name>", build.base, build.name)
	}

	var out string
	for _, r := range build.find("run") {
		cmd := strings.Join(r.args, " ")
		if !strings.Contains(cmd, "go build") {
			continue
		}
		if !regexp.MustCompile(`(^|\s)CGO_ENABLED=0\s`).MatchString(cmd) {
			t.Errorf("line %d: go build without CGO_ENABLED=0: %s", r.line, cmd)
		}
		if !strings.Contains(cmd, "./cmd/dlmesh") {
			t.Errorf("line %d: go build of something other than ./cmd/dlmesh: %s", r.line, cmd)
		}
		if m := regexp.MustCompile(`-o\s+(\S+)`).FindStringSubmatch(cmd); m != nil {
			out = m[1]
		}
	}
	if out == "" {
		t.Fatal("no RUN … CGO_ENABLED=0 … go build -o PATH ./cmd/dlmesh in the build stage")
	}

	if !regexp.MustCompile(`^gcr\.io/distroless/[a-z]+-debian\d+:nonroot$`).MatchString(final.base) {
		t.Errorf("runtime stage FROM %s, want gcr.io/distroless/…-debian…:nonroot", final.base)
	}
	if u := final.find("user"); len(u) == 0 || !strings.HasPrefix(u[len(u)-1].args[0], "nonroot") {
		t.Errorf("runtime USER %v, want nonroot", u)
	}
	copies := map[string]string{} // source in the build stage -> destination
	for _, c := range final.find("copy") {
		for _, f := range c.flags {
			if f == "--from="+build.name {
				copies[c.args[0]] = c.args[1]
			}
		}
	}
	bin, ok := copies[out]
	if !ok {
		t.Fatalf("the runtime stage does not COPY --from=%s %s", build.name, out)
	}
	ep := final.find("entrypoint")
	if len(ep) != 1 || !ep[0].json || len(ep[0].args) != 1 || ep[0].args[0] != bin {
		t.Errorf("ENTRYPOINT %+v, want exec form [%q]", ep, bin)
	}
	// the binary finds models/llada2-tiny-go beside itself
	modelDir := filepath.Join(filepath.Dir(bin), "models")
	var modelSrc string
	for src, dst := range copies {
		if filepath.Clean(dst) == modelDir {
			modelSrc = src
		}
	}
	if modelSrc == "" {
		t.Errorf("the runtime stage copies no models folder to %s (beside %s)", modelDir, bin)
	}
	found := false
	for _, r := range build.find("run") {
		cmd := strings.Join(r.args, " ")
		found = found || (strings.Contains(cmd, "models/llada2-tiny-go") && strings.Contains(cmd, modelSrc))
	}
	if !found {
		t.Errorf("no build-stage RUN puts models/llada2-tiny-go into %s", modelSrc)
	}

	cmd := final.find("cmd")
	if len(cmd) != 1 || !cmd[0].json {
		t.Fatalf("CMD %+v, want one in exec form", cmd)
	}
	command, flags, err := parseArgs(cmd[0].args)
	if err != nil || command != "up" {
		t.Fatalf("CMD %q: want dlmesh up …: %v", cmd[0].args, err)
	}
	checkFlags(t, "Dockerfile CMD", "up", flags)
	for _, f := range flags {
		if strings.HasSuffix(f.name, "listen") && !strings.HasPrefix(f.value, "0.0.0.0:") {
			t.Errorf("CMD --%s=%s: want 0.0.0.0:PORT, reachable through docker run -p", f.name, f.value)
		}
	}
	exposed := strings.Join(joinArgs(final.find("expose")), " ")
	for _, f := range flags {
		if _, port, ok := strings.Cut(f.value, ":"); ok && !strings.Contains(" "+exposed+" ", " "+port+" ") {
			t.Errorf("CMD --%s port %s is not EXPOSEd (%s)", f.name, port, exposed)
		}
	}
}

func joinArgs(ins []instruction) []string {
	var out []string
	for _, in := range ins {
		out = append(out, in.args...)
	}
	return out
}

// TestDockerfileRuntimeLoader builds the binary as the Dockerfile does and reads its ELF header:
// a binary with an interpreter (purego's dlopen makes the linker emit one even with
// CGO_ENABLED=0) cannot start on distroless/static, which has no ld-linux.
func TestDockerfileRuntimeLoader(t *testing.T) {
	_, stages := parseDockerfile(t)
	final := stages[len(stages)-1]
	bin := binary(t)
	if !dlmesh.static {
		t.Skipf("the binary does not build with %v yet, so the image would not build either: %s", dockerBuildEnv, dlmesh.staticErr)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	interp := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	static := strings.Contains(final.base, "/static-")
	t.Logf("CGO_ENABLED=0 binary: interpreter %q; runtime image %s", interp, final.base)
	if interp != "" && static {
		t.Errorf("the binary needs the ELF interpreter %s, which %s lacks: use distroless/base", interp, final.base)
	}
	if interp == "" && !static {
		t.Logf("the binary is fully static now: %s could be distroless/static", final.base)
	}
}

// TestDockerignore: the build context keeps what the build needs (module files, sources, embedded
// files, the bundled model) and drops the git history and build outputs.
func TestDockerignore(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	keep := []string{"go.mod", "go.sum", "cmd/dlmesh/main.go", "kernels/cuda/ptx/llada2.ptx",
		"tracing/report.html.tmpl", "models/llada2-tiny-go/config.json", "models/llada2-tiny-go/tokenizer.json",
		"models/llada2-tiny-go/model.safetensors.index.json"}
	for _, p := range keep {
		if _, err := os.Stat(filepath.Join(repoRoot, p)); err != nil {
			t.Errorf("%s: %v (update this list)", p, err)
		}
		if ex, _ := pm.MatchesOrParentMatches(p); ex {
			t.Errorf(".dockerignore excludes %s, which the build needs", p)
		}
	}
	for _, p := range []string{".git/HEAD", "bin/dlmesh", "deploy/go.mod", "x/trace-1.jsonl"} {
		if ex, _ := pm.MatchesOrParentMatches(p); !ex {
			t.Errorf(".dockerignore keeps %s in the build context", p)
		}
	}
}
