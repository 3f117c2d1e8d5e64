package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// repoRoot is the main module's directory, the parent of this one.
const repoRoot = ".."

// dlmesh is the binary built from ../cmd/dlmesh once per test run.
var dlmesh struct {
	once sync.Once
	path string
	// static: built as the Dockerfile builds it (CGO_ENABLED=0); staticErr says why not
	static    bool
	staticErr string
	err       error
	dir       string
	helpOnce  sync.Map // command -> *helpResult
}

type helpResult struct {
	once  sync.Once
	flags map[string]bool
	err   error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if dlmesh.dir != "" {
		_ = os.RemoveAll(dlmesh.dir)
	}
	os.Exit(code)
}

// dockerBuildEnv is the environment deploy/Dockerfile builds the binary with.
var dockerBuildEnv = []string{"CGO_ENABLED=0", "GOOS=linux"}

// binary builds ./cmd/dlmesh of the main module, first as the Dockerfile does (CGO_ENABLED=0)
// and, if that fails, with the default environment, and returns its path.
func binary(tb testing.TB) string {
	tb.Helper()
	dlmesh.once.Do(func() {
		dir, err := os.MkdirTemp("", "dlmesh-deploy-test-")
		if err != nil {
			dlmesh.err = err
			return
		}
		dlmesh.dir = dir
		dlmesh.path = filepath.Join(dir, "dlmesh")
		build := func(env []string) error {
			cmd := exec.Command("go", "build", "-o", dlmesh.path, "./cmd/dlmesh")
			cmd.Dir = repoRoot
			cmd.Env = append(os.Environ(), env...)
			if runtime.GOOS != "linux" {
				cmd.Env = append(cmd.Env, "GOOS="+runtime.GOOS)
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("go build ./cmd/dlmesh %v: %v\n%s", env, err, firstLines(out, 12))
			}
			return nil
		}
		if runtime.GOOS == "linux" {
			if err := build(dockerBuildEnv); err == nil {
				dlmesh.static = true
				return
			} else {
				dlmesh.staticErr = err.Error()
			}
		} else {
			dlmesh.staticErr = "not on linux"
		}
		dlmesh.err = build(nil)
	})
	if dlmesh.err != nil {
		tb.Fatal(dlmesh.err)
	}
	return dlmesh.path
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitN(string(b), "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "…")
	}
	return strings.Join(lines, "\n")
}

var helpFlag = regexp.MustCompile(`(?m)^\s+(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)\b`)

// commandFlags returns the long flags `dlmesh CMD --help` lists (the command's and the global ones).
func commandFlags(tb testing.TB, command string) map[string]bool {
	tb.Helper()
	bin := binary(tb)
	v, _ := dlmesh.helpOnce.LoadOrStore(command, &helpResult{})
	h := v.(*helpResult)
	h.once.Do(func() {
		out, err := exec.Command(bin, command, "--help").CombinedOutput()
		if err != nil {
			h.err = fmt.Errorf("dlmesh %s --help: %v\n%s", command, err, out)
			return
		}
		if !bytes.Contains(out, []byte("Usage:")) {
			h.err = fmt.Errorf("dlmesh %s --help: no usage text (unknown command?):\n%s", command, out)
			return
		}
		h.flags = map[string]bool{}
		for _, m := range helpFlag.FindAllStringSubmatch(string(out), -1) {
			h.flags[m[1]] = true
		}
	})
	if h.err != nil {
		tb.Fatal(h.err)
	}
	return h.flags
}

// pendingFlags are flags the deployment files pass that another part of the work in progress adds
// to the binary; until it lands they are reported, not failed. Remove an entry once it exists.
var pendingFlags = map[string]map[string]string{}

// flag is one --name[=value] or --name value argument.
type flag struct{ name, value string }

// parseArgs splits a dlmesh command line (without the binary) into the command and its flags;
// every argument after the command must be a long flag or a flag's value.
func parseArgs(args []string) (command string, flags []flag, err error) {
	if len(args) == 0 {
		return "", nil, fmt.Errorf("no command")
	}
	command = args[0]
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			if command == "up" && i == len(args)-1 {
				continue // the PROMPT
			}
			return "", nil, fmt.Errorf("argument %d %q: want --flag[=value]", i, a)
		}
		name, value, ok := strings.Cut(a[2:], "=")
		if !ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") && !boolFlags[name] {
			value = args[i+1]
			i++
		}
		flags = append(flags, flag{name, value})
	}
	return command, flags, nil
}

// boolFlags are the dlmesh flags that take no value.
var boolFlags = map[string]bool{"exit": true, "wire-bf16": true, "allow-missing-experts": true}

// checkFlags fails tb for each flag the binary's command does not define (pending ones are logged).
func checkFlags(tb testing.TB, where, command string, flags []flag) {
	tb.Helper()
	known := commandFlags(tb, command)
	for _, f := range flags {
		if known[f.name] {
			continue
		}
		if why, ok := pendingFlags[command][f.name]; ok {
			tb.Logf("%s: dlmesh %s --%s is not in this binary yet (pending: %s)", where, command, f.name, why)
			continue
		}
		tb.Errorf("%s: dlmesh %s has no flag --%s (it has %v)", where, command, f.name, sortedKeys(known))
	}
}

func flagValue(flags []flag, name string) (string, bool) {
	for _, f := range flags {
		if f.name == name {
			return f.value, true
		}
	}
	return "", false
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// parseExperts parses an --experts value (LO-HI inclusive or a comma list) like expertd does.
func parseExperts(s string) ([]int, error) {
	var ids []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("--experts %q: %q is not a number", s, lo)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("--experts %q: bad range %q", s, part)
			}
		}
		for e := a; e <= b; e++ {
			ids = append(ids, e)
		}
	}
	return ids, nil
}

// modelExperts is the routed expert count of the bundled model.
func modelExperts(tb testing.TB) int {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "models", "llada2-tiny-go", "config.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var c struct {
		NumExperts int `json:"num_experts"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.NumExperts <= 0 {
		tb.Fatalf("bundled model config.json: num_experts %d, %v", c.NumExperts, err)
	}
	return c.NumExperts
}

// checkCoverage fails tb unless groups partition the experts 0..n-1.
func checkCoverage(tb testing.TB, n int, groups map[string][]int) {
	tb.Helper()
	owner := map[int]string{}
	for g, ids := range groups {
		for _, e := range ids {
			if e < 0 || e >= n {
				tb.Errorf("group %s: expert %d outside 0..%d", g, e, n-1)
			}
			if o, dup := owner[e]; dup {
				tb.Errorf("expert %d in groups %s and %s", e, o, g)
			}
			owner[e] = g
		}
	}
	for e := range n {
		if _, ok := owner[e]; !ok {
			tb.Errorf("expert %d served by no group", e)
		}
	}
}

// livenessService reads services.LivenessService from the main module's source.
func livenessService(tb testing.TB) string {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "services", "server.go"))
	if err != nil {
		tb.Fatal(err)
	}
	m := regexp.MustCompile(`LivenessService = "([^"]+)"`).FindSubmatch(b)
	if m == nil {
		tb.Fatal("services/server.go: no LivenessService constant")
	}
	return string(m[1])
}
