package mesh_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/internal/fixtures"
	"github.com/dlmesh/dlmesh/mesh"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/tlstest"
)

func newTLS(t *testing.T, cfg services.TLSConfig) *services.TLS {
	t.Helper()
	tl, err := services.NewTLS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// TestMeshWithMTLS runs a fixture case through gateway → attnd → expertd with TLS everywhere
// and mTLS between the services, then calls attnd and expertd directly as outsiders: without a
// certificate (Unauthenticated), with one of another CA (refused at the handshake), in
// plaintext (refused), and as a member (answered).
func TestMeshWithMTLS(t *testing.T) {
	ca, other := tlstest.NewCA(t, "mesh"), tlstest.NewCA(t, "other")
	cert, key := ca.Issue(t, "member")
	strCert, strKey := other.Issue(t, "stranger")
	member := services.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.File}
	meshTLS := member
	meshTLS.RequireClientCert = true
	m := upMesh(t, mesh.Config{TLS: newTLS(t, meshTLS)})

	f := fixtures.LoadGen(t)
	gc := f.Cases[0]
	// an end user: verifies the gateway, presents no certificate
	user, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{TLS: newTLS(t, services.TLSConfig{CAFile: ca.File})})
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	s, err := generate(t.Context(), user, request(gc, "tls-0"))
	if err != nil {
		t.Fatal(err)
	}
	checkCase(t, f, gc, s)

	plain, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := generate(ctx, plain, request(gc, "plain")); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext Generate against a TLS gateway: %v, want Unavailable", err)
	}

	clients := []struct {
		name string
		cfg  services.ClientConfig
		want codes.Code
	}{
		{"member", services.ClientConfig{TLS: newTLS(t, member)}, codes.OK},
		{"no certificate", services.ClientConfig{TLS: newTLS(t, services.TLSConfig{CAFile: ca.File})}, codes.Unauthenticated},
		{"certificate of another ca", services.ClientConfig{TLS: newTLS(t, services.TLSConfig{CertFile: strCert, KeyFile: strKey, CAFile: ca.File})}, codes.Unavailable},
		{"plaintext", services.ClientConfig{}, codes.Unavailable},
	}
	a := m.Addrs()
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			ecc, err := services.Dial(a.Expertd[0], c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer ecc.Close()
			_, err = pb.NewExpertsClient(ecc).Info(ctx, &pb.InfoRequest{})
			if got := status.Code(err); got != c.want {
				t.Errorf("expertd Info: %v, want %v", err, c.want)
			}
			// Compute with an empty request: a member gets past the credentials to the
			// validation (InvalidArgument); the others are stopped before it
			_, err = pb.NewExpertsClient(ecc).Compute(ctx, &pb.ExpertsRequest{})
			want := c.want
			if want == codes.OK {
				want = codes.InvalidArgument
			}
			if got := status.Code(err); got != want {
				t.Errorf("expertd Compute: %v, want %v", err, want)
			}
			acc, err := services.Dial(a.Attnds[0], c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer acc.Close()
			_, err = pb.NewAttentionClient(acc).Open(ctx, &pb.OpenRequest{})
			if got := status.Code(err); got != want {
				t.Errorf("attnd Open: %v, want %v", err, want)
			}
		})
	}
}
