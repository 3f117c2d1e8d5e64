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

// proc is a started child process: its address, and its stderr (the log) kept line by line.
type proc struct {
	name, addr string
	cmd        *exec.Cmd
	done       chan struct{} // closed once the process exited and its stderr was read to the end

	mu   sync.Mutex
	log  []string
	grew chan struct{} // closed (and replaced) on every new line and at the end of stderr
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
	p := &proc{name: args[0], cmd: cmd, done: make(chan struct{}), grew: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.log = append(p.log, sc.Text())
			close(p.grew)
			p.grew = make(chan struct{})
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.mu.Lock()
		close(p.grew)
		p.grew = nil // no more lines
		p.mu.Unlock()
		_ = cmd.Wait() // after the last read of stderr, as exec.Cmd requires
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	line, ok := p.waitLog(90*time.Second, func(l string) bool { return strings.Contains(l, ready) })
	if !ok {
		t.Fatalf("%s not ready (no line with %q) after 90 s or exited:\n%s", args[0], ready, strings.Join(p.lines(), "\n"))
	}
	for _, l := range p.lines() {
		if p.addr = addrRE.FindString(l); p.addr != "" || l == line {
			break
		}
	}
	if p.addr == "" {
		t.Fatalf("%s is ready but printed no address:\n%s", args[0], strings.Join(p.lines(), "\n"))
	}
	return p
}

// lines is the process's stderr so far.
func (p *proc) lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.log)
}

// waitLog waits up to d for a stderr line (one already printed included) that match accepts and
// returns it; false when none came within d or the process's stderr ended without one.
func (p *proc) waitLog(d time.Duration, match func(string) bool) (string, bool) {
	deadline := time.After(d)
	seen := 0
	for {
		p.mu.Lock()
		lines, grew := p.log[seen:], p.grew
		seen = len(p.log)
		p.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, true
			}
		}
		if grew == nil {
			return "", false
		}
		select {
		case <-grew:
		case <-deadline:
			return "", false
		}
	}
}

// kill9 kills the process with SIGKILL and waits until it is gone.
func (p *proc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill -9 %s: %v", p.name, err)
	}
	<-p.done
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
