package services

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// orderRegistry records what happens at deregistration: the node's health at that moment.
type orderRegistry struct {
	*MemRegistry
	hc healthpb.HealthClient

	mu    sync.Mutex
	order []string
}

func (r *orderRegistry) Deregister(ctx context.Context, id string) error {
	resp, err := r.hc.Check(ctx, &healthpb.HealthCheckRequest{})
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.order = append(r.order, "deregister: health: "+err.Error())
	} else {
		r.order = append(r.order, "deregister "+id+" while "+resp.GetStatus().String())
	}
	return r.MemRegistry.Deregister(ctx, id)
}

func startNode(tb testing.TB, reg Registry, load func(context.Context) error) (*Node, error) {
	tb.Helper()
	return StartNode(context.Background(), NodeConfig{Name: "test", Listen: "127.0.0.1:0", Registry: reg},
		func(s grpc.ServiceRegistrar) { pb.RegisterExpertsServer(s, &fakeExperts{}) }, load)
}

func TestNodeLifecycle(t *testing.T) {
	reg := &orderRegistry{MemRegistry: NewMemRegistry()}
	loaded := false
	n, err := startNode(t, reg, func(context.Context) error { loaded = true; return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop(context.Background())
	if !loaded {
		t.Fatal("StartNode did not run load")
	}
	conn, err := Dial(n.Addr(), ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reg.hc = healthpb.NewHealthClient(conn)
	checkHealth(t, reg.hc, "", healthpb.HealthCheckResponse_NOT_SERVING)

	n.SetServing(true)
	if err := n.Register(t.Context(), Instance{ID: "e0", Kind: KindExpertd, Addr: n.Addr()}); err != nil {
		t.Fatal(err)
	}
	checkHealth(t, reg.hc, pb.Experts_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	if got, _ := reg.Instances(t.Context(), KindExpertd); len(got) != 1 || !n.Registered() {
		t.Fatalf("registry holds %v (registered %v), want e0", got, n.Registered())
	}

	if err := n.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if got, _ := reg.Instances(t.Context(), KindExpertd); len(got) != 0 || n.Registered() {
		t.Errorf("after Stop the registry holds %v", got)
	}
	if want := []string{"deregister e0 while NOT_SERVING"}; len(reg.order) != 1 || reg.order[0] != want[0] {
		t.Errorf("shutdown order %v, want %v", reg.order, want)
	}
	if err := n.Register(t.Context(), Instance{ID: "e0", Kind: KindExpertd, Addr: n.Addr()}); err == nil {
		t.Error("Register after Stop succeeded")
	}
	if err := n.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestNodeLoadFailure(t *testing.T) {
	errLoad := errors.New("test: weights missing")
	n, err := startNode(t, nil, func(context.Context) error { return errLoad })
	if n != nil || !errors.Is(err, errLoad) {
		t.Fatalf("StartNode = %v, %v; want the load error", n, err)
	}
}

func TestNodeListenError(t *testing.T) {
	_, err := StartNode(t.Context(), NodeConfig{Name: "test", Listen: "256.0.0.1:0"}, func(grpc.ServiceRegistrar) {}, nil)
	if err == nil || !strings.Contains(err.Error(), "test: listen") {
		t.Errorf("StartNode on a bad address: %v, want a test: listen error", err)
	}
}
