package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/services"
)

// TestHealthCommand: dlmesh health exits 0 for SERVING, fails with errNotServing for a server that
// is up but not serving (while its liveness service is SERVING), and fails for no server.
func TestHealthCommand(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := services.NewServer(services.ServerConfig{})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	addr := lis.Addr().String()

	health := func(args ...string) (string, error) {
		var out bytes.Buffer
		cmd := healthCmd()
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(args)
		err := cmd.Execute()
		return out.String(), err
	}
	if out, err := health("--addr", addr); !errors.Is(err, errNotServing) || !strings.Contains(out, "NOT_SERVING") {
		t.Errorf("before SetServing: %v, %q; want errNotServing and NOT_SERVING", err, out)
	}
	if out, err := health("--addr", addr, "--service", services.LivenessService); err != nil || !strings.HasPrefix(out, "SERVING") {
		t.Errorf("liveness before SetServing: %v, %q; want SERVING", err, out)
	}
	s.SetServing(true)
	if out, err := health("--addr", addr); err != nil || !strings.HasPrefix(out, "SERVING") {
		t.Errorf("after SetServing: %v, %q; want SERVING", err, out)
	}
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	_ = dead.Close()
	if _, err := health("--addr", deadAddr, "--timeout", "300ms"); err == nil || errors.Is(err, errNotServing) {
		t.Errorf("no server: %v, want a connection error", err)
	}
	if _, err := health(); err == nil || !strings.Contains(err.Error(), "--addr") {
		t.Errorf("no --addr: %v, want an error naming --addr", err)
	}
}
