package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the writer goroutine of exec and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Ctrl-C while `dlmesh up PROMPT` generates cancels the generation and stops the mesh: the
// process exits 0 after "stopping the mesh", instead of dying of the signal.
func TestUpInterruptStopsMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts the mesh; skipped with -short")
	}
	bin := buildBinary(t)
	model := filepath.Join("..", "..", "models", "llada2-tiny-go")
	cmd := exec.Command(bin, "up", "--model", model, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--mode", "v20", "--gen", "2048", "func main() {")
	var stderr syncBuffer
	cmd.Stderr, cmd.Stdout = &stderr, nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(stderr.String(), "gateway  ") {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("mesh not up after 90 s:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("up after SIGINT: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		t.Fatalf("up still running 30 s after SIGINT:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopping the mesh") {
		t.Errorf("up exited without stopping the mesh:\n%s", stderr.String())
	}
}
