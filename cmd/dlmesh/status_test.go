package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/consultest"
)

// TestStatusShowsCoverage registers expertd instances (gRPC health servers) in a real Consul agent
// and checks that `dlmesh status` lists them with their health and the expert coverage.
func TestStatusShowsCoverage(t *testing.T) {
	agent := consultest.Start(t)
	reg, err := services.NewConsulRegistry(services.ConsulConfig{Addr: agent.Addr, CheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	register := func(id, experts string) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := services.NewServer(services.ServerConfig{})
		go func() { _ = s.Serve(lis) }()
		s.SetServing(true)
		t.Cleanup(func() { _ = s.Stop(context.Background()) })
		in := services.Instance{ID: id, Kind: services.KindExpertd, Addr: lis.Addr().String(), Meta: map[string]string{"experts": experts}}
		if err := reg.Register(ctx, in); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = reg.Deregister(context.Background(), id) })
	}
	status := func() string {
		var out bytes.Buffer
		cmd := statusCmd()
		cmd.SetOut(&out)
		cmd.SetArgs([]string{"--consul", agent.Addr, "--model", filepath.Join("..", "..", "models", "llada2-tiny-go")})
		if err := cmd.Execute(); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	passing := func(n int) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			l, _ := reg.Instances(ctx, services.KindExpertd)
			if len(l) == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d passing instances, want %d", len(l), n)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	register("expertd-g0", "0-7")
	passing(1)
	out := status()
	if !strings.Contains(out, "expertd-g0") || !strings.Contains(out, "passing") || !strings.Contains(out, "MISSING experts 8,9,10,11,12,13,14,15") {
		t.Fatalf("status with group 1 missing:\n%s", out)
	}
	register("expertd-g1", "8-15")
	passing(2)
	if out = status(); !strings.Contains(out, "expertd-g1") || !strings.Contains(out, "complete, at least 1 passing replica(s) per expert") {
		t.Fatalf("status with both groups:\n%s", out)
	}
	t.Logf("dlmesh status:\n%s", out)
}
