package services_test

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/consultest"
	"github.com/dlmesh/dlmesh/services/tlstest"

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

// A TLS instance that requires client certificates passes Consul's check with CheckTLS: the
// check speaks TLS (GRPCUseTLS, no verification without a server name) and health needs no
// client certificate. A plaintext check against the same server never passes.
func TestConsulRegistryChecksTLSInstances(t *testing.T) {
	agent := consultest.Start(t)
	ca := tlstest.NewCA(t, "mesh")
	cert, key := ca.Issue(t, "expertd")
	ctx := t.Context()
	addr := tlsServer(t, services.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.File, RequireClientCert: true})
	for _, tc := range []struct {
		name    string
		tls     bool
		passing bool
	}{{"tls check", true, true}, {"plaintext check", false, false}} {
		t.Run(tc.name, func(t *testing.T) {
			reg, err := services.NewConsulRegistry(services.ConsulConfig{Addr: agent.Addr, CheckInterval: 200 * time.Millisecond, CheckTLS: tc.tls})
			if err != nil {
				t.Fatal(err)
			}
			in := services.Instance{ID: "expertd-tls-" + tc.name, Kind: services.KindExpertd, Addr: addr}
			if err := reg.Register(ctx, in); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = reg.Deregister(context.Background(), in.ID) })
			listed := func() bool {
				l, _ := reg.Instances(ctx, services.KindExpertd)
				return slices.ContainsFunc(l, func(x services.Instance) bool { return x.ID == in.ID })
			}
			if tc.passing {
				testutil.WaitFor(t, "tls instance passing", 10*time.Second, listed)
				return
			}
			time.Sleep(1500 * time.Millisecond)
			if listed() {
				t.Fatal("a plaintext check passed against a TLS server")
			}
		})
	}
}
