package services_test

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/consultest"

	"github.com/dlmesh/dlmesh/internal/testutil"
)

// healthServer is a real gRPC server with the standard health service, on loopback.
func healthServer(t *testing.T) (*services.Server, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := services.NewServer(services.ServerConfig{})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return s, lis.Addr().String()
}

func TestConsulRegistryFollowsHealth(t *testing.T) {
	agent := consultest.Start(t)
	reg, err := services.NewConsulRegistry(services.ConsulConfig{Addr: agent.Addr, CheckInterval: 200 * time.Millisecond, Fingerprint: "fp1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, addr := healthServer(t) // NOT_SERVING until SetServing(true)
	in := services.Instance{ID: "expertd-a", Kind: services.KindExpertd, Addr: addr, Tags: []string{"group=0"},
		Meta: map[string]string{"fingerprint": "fp1", "experts": "0-7"}}
	ch, err := reg.Watch(ctx, services.KindExpertd)
	if err != nil {
		t.Fatal(err)
	}
	if first := <-ch; len(first) != 0 {
		t.Fatalf("watch starts with %v, want none", first)
	}
	if err := reg.Register(ctx, in); err != nil {
		t.Fatal(err)
	}
	// another model's instance is filtered out by fingerprint
	_, addr2 := healthServer(t)
	if err := reg.Register(ctx, services.Instance{ID: "expertd-other", Kind: services.KindExpertd, Addr: addr2, Meta: map[string]string{"fingerprint": "fp2"}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	if list, err := reg.Instances(ctx, services.KindExpertd); err != nil || len(list) != 0 {
		t.Fatalf("NOT_SERVING instance listed: %v %v", list, err)
	}
	srv.SetServing(true)
	var got []services.Instance
	d := testutil.WaitFor(t, "passing instance in the watch", 10*time.Second, func() bool {
		select {
		case got = <-ch:
		default:
		}
		return len(got) == 1
	})
	t.Logf("instance passing and watched %v after SERVING", d.Round(time.Millisecond))
	if got[0].ID != in.ID || got[0].Addr != addr || got[0].Meta["experts"] != "0-7" || !slices.Contains(got[0].Tags, "group=0") {
		t.Fatalf("watched %+v", got[0])
	}
	srv.SetServing(false)
	testutil.WaitFor(t, "NOT_SERVING instance leaving the watch", 10*time.Second, func() bool {
		select {
		case got = <-ch:
		default:
		}
		return len(got) == 0
	})
	srv.SetServing(true)
	testutil.WaitFor(t, "instance back in the watch", 10*time.Second, func() bool {
		select {
		case got = <-ch:
		default:
		}
		return len(got) == 1
	})
	if err := reg.Deregister(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if err := reg.Deregister(ctx, "no-such-id"); err != nil {
		t.Fatalf("deregister unknown: %v", err)
	}
	if l, _ := reg.Instances(ctx, services.KindExpertd); len(l) != 0 {
		t.Fatalf("after deregister: %v", l)
	}
	d = testutil.WaitFor(t, "deregistered instance leaving the watch", 5*time.Second, func() bool {
		select {
		case got = <-ch:
		default:
		}
		return len(got) == 0
	})
	t.Logf("deregistered instance left the watch after %v", d.Round(time.Millisecond))
	cancel()
	testutil.WaitFor(t, "watch channel closed", 5*time.Second, func() bool {
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return true
				}
			default:
				return false
			}
		}
	})
}

func TestConsulRegistryRefusesDeadAgent(t *testing.T) {
	if _, err := services.NewConsulRegistry(services.ConsulConfig{Addr: "127.0.0.1:1"}); err == nil {
		t.Fatal("no error for an agent that does not answer")
	}
}
