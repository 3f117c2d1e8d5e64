package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/consultest"

	"github.com/dlmesh/dlmesh/internal/testutil"
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
	if f := loadRow(t, out, "expertd-g1"); f[0] != "error" || !strings.Contains(strings.Join(f, " "), "Unimplemented") {
		t.Errorf("load of a health-only server: %v, want error (Unimplemented)", f)
	}
	t.Logf("dlmesh status:\n%s", out)
}

// hungAttention is an Attention service whose Info never answers.
type hungAttention struct {
	pb.UnimplementedAttentionServer
}

func (hungAttention) Info(ctx context.Context, _ *pb.InfoRequest) (*pb.ModelInfo, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// loadRow returns the fields of id's row in the load table of a status output.
func loadRow(t *testing.T, out, id string) []string {
	t.Helper()
	_, load, ok := strings.Cut(out, "\nload (")
	if !ok {
		t.Fatalf("no load table:\n%s", out)
	}
	for _, line := range strings.Split(load, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == id {
			return f[1:]
		}
	}
	t.Fatalf("no load row for %s:\n%s", id, out)
	return nil
}

// TestStatusShowsLoad: an expertd and an attnd (in-process, discovering through a real Consul
// agent) report their load through Info after one step: `dlmesh status` shows the Compute calls
// of the expertd, the Step call, session and KV use of the attnd, and a registered instance whose
// Info hangs as unreachable within --timeout instead of hanging the command.
func TestStatusShowsLoad(t *testing.T) {
	agent := consultest.Start(t)
	reg, err := services.NewConsulRegistry(services.ConsulConfig{Addr: agent.Addr, CheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	modelDir := filepath.Join("..", "..", "models", "llada2-tiny-go")
	e, err := expertd.New(ctx, expertd.Config{ModelDir: modelDir, Experts: model.AllExperts(16)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	if err := reg.Register(ctx, e.Instance("expertd-all")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Deregister(context.Background(), "expertd-all") })
	a, err := attnd.New(ctx, attnd.Config{ModelDir: modelDir, ID: "attnd-0"}, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	cc, err := services.Dial(a.Addr(), services.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ac := pb.NewAttentionClient(cc)
	if _, err := ac.Open(ctx, &pb.OpenRequest{SessionId: "s", Capacity: 32}); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: "s", Tokens: []int32{952, 2311, 449, 945}, OutRows: 4, TopK: 1}}}); err != nil {
		t.Fatal(err)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hung := services.NewServer(services.ServerConfig{})
	pb.RegisterAttentionServer(hung, hungAttention{})
	go func() { _ = hung.Serve(lis) }()
	hung.SetServing(true)
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = hung.Stop(sctx)
	})
	if err := reg.Register(ctx, services.Instance{ID: "attnd-hung", Kind: services.KindAttnd, Addr: lis.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Deregister(context.Background(), "attnd-hung") })
	testutil.WaitFor(t, "both attnd passing", 10*time.Second, func() bool {
		l, _ := reg.Instances(ctx, services.KindAttnd)
		return len(l) == 2
	})

	var out bytes.Buffer
	cmd := statusCmd()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"--consul", agent.Addr, "--model", modelDir, "--timeout", "500ms"})
	t0 := time.Now()
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	t.Logf("dlmesh status (%v):\n%s", took.Round(time.Millisecond), out.String())
	if took > 5*time.Second {
		t.Errorf("status took %v with a hung instance and --timeout 500ms", took)
	}
	s := out.String()
	// id state in-flight calls errors p50 p99 sessions kv
	if f := loadRow(t, s, "expertd-all"); len(f) != 8 || f[0] != "ok" || f[1] != "0" || f[2] != "7" || f[3] != "0" || f[4] == "-" || f[6] != "-" {
		t.Errorf("expertd load %v: want 0 in flight, 7 Compute calls (one per MoE layer), no error, a latency", f)
	}
	if f := loadRow(t, s, "attnd-0"); len(f) != 8 || f[0] != "ok" || f[1] != "0" || f[2] != "1" || f[3] != "0" || f[4] == "-" || f[6] != "1" || f[7] != "4/32" {
		t.Errorf("attnd load %v: want 1 step, 1 session holding 4 of 32 KV positions", f)
	}
	if f := loadRow(t, s, "attnd-hung"); len(f) < 1 || f[0] != "unreachable" || !strings.Contains(strings.Join(f, " "), "DeadlineExceeded") {
		t.Errorf("hung instance: %v, want unreachable (DeadlineExceeded)", f)
	}
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) > 5 && (f[1] == "expertd-all" || f[1] == "attnd-0") && f[5] != "cpu" {
			t.Errorf("device of %s is %q, want cpu:\n%s", f[1], f[5], line)
		}
	}
}
