package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// TestMeshAsProcesses starts the mesh as real processes on loopback — two expertd (experts 0-7
// and 8-15), one attnd, one gateway — and checks a fixture generation through `dlmesh generate`
// token for token, then reports every process's resident memory.
func TestMeshAsProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts four processes; skipped with -short")
	}
	bin := buildBinary(t)
	model := filepath.Join("..", "..", "models", "llada2-tiny-go")
	addrRE := regexp.MustCompile(`(127\.0\.0\.1:\d+)`)

	e0 := startProc(t, bin, addrRE, "expertd serving", "expertd", "--model", model, "--experts", "0-7")
	e1 := startProc(t, bin, addrRE, "expertd serving", "expertd", "--model", model, "--experts", "8-15")
	at := startProc(t, bin, addrRE, "attnd serving", "attnd", "--model", model, "--expertd", e0.addr+","+e1.addr)
	gw := startProc(t, bin, addrRE, "gateway serving", "gateway", "--model", model, "--attnd", at.addr, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")

	f := fixtures.LoadGen(t)
	c := f.Cases[3] // "// Reverse returns s…", quality mode
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "generate", "--addr", gw.addr, "--mode", c.Mode, "--gen", fmt.Sprint(c.GenLength), "--json", c.Prompt).Output()
	if err != nil {
		t.Fatalf("generate: %v (%s)", err, exitStderr(err))
	}
	var got struct {
		IDs      []int32 `json:"ids"`
		Text     string  `json:"text"`
		Forwards int     `json:"forwards"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("generate --json: %v\n%s", err, out)
	}
	// The fixture holds the reference's whole window; a request returns its first gen_length.
	tok, err := tokenizer.Load(model)
	if err != nil {
		t.Fatal(err)
	}
	ids := c.IDs[:min(len(c.IDs), c.GenLength)]
	if !slices.Equal(got.IDs, ids) || got.Text != tok.Decode(ids) || got.Forwards != c.Forwards {
		t.Errorf("through the processes: %d forwards, ids %v %q\nreference: %d forwards, ids %v", got.Forwards, got.IDs, got.Text, c.Forwards, ids)
	}
	// The same prompt from stdin ("-"), and a chat read from stdin (--chat -): the first must give
	// the same output, the second a rendered prompt the gateway accepts.
	stdinRun := func(stdin string, args ...string) []byte {
		cmd := exec.CommandContext(ctx, bin, append([]string{"generate", "--addr", gw.addr, "--mode", c.Mode, "--gen", fmt.Sprint(c.GenLength), "--json"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("generate %v: %v (%s)", args, err, exitStderr(err))
		}
		return out
	}
	if again := stdinRun(c.Prompt, "-"); !bytes.Equal(again, out) {
		t.Errorf("generate - (prompt on stdin):\n%s\nwant the output of the prompt as an argument:\n%s", again, out)
	}
	var chat struct {
		IDs []int32 `json:"ids"`
	}
	if err := json.Unmarshal(stdinRun(`{"messages": [{"role": "user", "content": "Write Reverse in Go."}]}`, "--chat", "-"), &chat); err != nil || len(chat.IDs) == 0 {
		t.Errorf("generate --chat -: %v, %d ids", err, len(chat.IDs))
	}
	for _, p := range []*proc{e0, e1, at, gw} {
		t.Logf("%-8s pid %d  VmRSS %6d KiB  (%s)", p.name, p.cmd.Process.Pid, rssKiB(p.cmd.Process.Pid), p.addr)
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// buildBinary builds the dlmesh binary once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "dlmesh-bin")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "dlmesh")
		build := exec.Command("go", "build", "-o", binPath, ".")
		build.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := build.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type proc struct {
	name, addr string
	cmd        *exec.Cmd
}

// startProc starts `bin args…`, waits for a stderr line containing ready, and takes the first
// loopback address printed on the lines so far as the process's address.
func startProc(t *testing.T, bin string, addrRE *regexp.Regexp, ready string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: args[0], cmd: cmd}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stderr)
	}()
	deadline := time.After(90 * time.Second)
	var seen []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("%s exited before it was ready:\n%s", args[0], strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if p.addr == "" {
				if m := addrRE.FindString(l); m != "" {
					p.addr = m
				}
			}
			if strings.Contains(l, ready) {
				if p.addr == "" {
					t.Fatalf("%s is ready but printed no address:\n%s", args[0], strings.Join(seen, "\n"))
				}
				return p
			}
		case <-deadline:
			t.Fatalf("%s not ready after 90 s:\n%s", args[0], strings.Join(seen, "\n"))
		}
	}
}

var rssMu sync.Mutex

// rssKiB is a process's resident set size from /proc (0 where /proc is not available).
func rssKiB(pid int) int {
	rssMu.Lock()
	defer rssMu.Unlock()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
