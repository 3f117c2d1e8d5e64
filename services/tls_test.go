package services_test

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/tlstest"
)

// echoService answers EmptyCall (unary) and FullDuplexCall (stream) and records the peer's
// certificate name.
type echoService struct {
	testpb.UnimplementedTestServiceServer
}

func (echoService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

func (echoService) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
			return err
		}
	}
}

// tlsServer serves echoService and health with TLS cfg on loopback.
func tlsServer(t *testing.T, cfg services.TLSConfig) string {
	t.Helper()
	tl, err := services.NewTLS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := services.NewServer(services.ServerConfig{TLS: tl})
	testpb.RegisterTestServiceServer(s, echoService{})
	s.SetServing(true)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return lis.Addr().String()
}

func dialTLS(t *testing.T, addr string, cfg services.TLSConfig) *grpc.ClientConn {
	t.Helper()
	var ccfg services.ClientConfig
	if cfg.Enabled() {
		tl, err := services.NewTLS(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ccfg.TLS = tl
	}
	cc, err := services.Dial(addr, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// calls runs one unary and one streaming call and returns their codes.
func calls(t *testing.T, cc *grpc.ClientConn) (unary, stream codes.Code) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c := testpb.NewTestServiceClient(cc)
	_, err := c.EmptyCall(ctx, &testpb.Empty{})
	unary = status.Code(err)
	st, err := c.FullDuplexCall(ctx)
	if err == nil {
		if err = st.Send(&testpb.StreamingOutputCallRequest{}); err == nil {
			_, err = st.Recv()
		}
	}
	return unary, status.Code(err)
}

func TestMTLSRefusesClientsWithoutAMeshCertificate(t *testing.T) {
	ca, other := tlstest.NewCA(t, "mesh"), tlstest.NewCA(t, "other")
	srvCert, srvKey := ca.Issue(t, "expertd")
	cliCert, cliKey := ca.Issue(t, "attnd")
	strCert, strKey := other.Issue(t, "stranger")
	addr := tlsServer(t, services.TLSConfig{CertFile: srvCert, KeyFile: srvKey, CAFile: ca.File, RequireClientCert: true})

	cases := []struct {
		name   string
		client services.TLSConfig
		want   codes.Code
	}{
		{"mesh member", services.TLSConfig{CertFile: cliCert, KeyFile: cliKey, CAFile: ca.File}, codes.OK},
		{"no client certificate", services.TLSConfig{CAFile: ca.File}, codes.Unauthenticated},
		{"certificate of another ca", services.TLSConfig{CertFile: strCert, KeyFile: strKey, CAFile: ca.File}, codes.Unavailable},
		{"plaintext client", services.TLSConfig{}, codes.Unavailable},
		{"client not trusting the server", services.TLSConfig{CertFile: cliCert, KeyFile: cliKey, CAFile: other.File}, codes.Unavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u, s := calls(t, dialTLS(t, addr, tc.client))
			if u != tc.want || s != tc.want {
				t.Fatalf("unary %v, stream %v; want %v", u, s, tc.want)
			}
		})
	}
	// health stays open to a TLS client without a certificate (Consul's check, probes)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(dialTLS(t, addr, services.TLSConfig{CAFile: ca.File})).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health without a client certificate: %v %v", resp, err)
	}
}

func TestTLSWithoutClientCertRequirement(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	srvCert, srvKey := ca.Issue(t, "gateway")
	addr := tlsServer(t, services.TLSConfig{CertFile: srvCert, KeyFile: srvKey, CAFile: ca.File})
	if u, s := calls(t, dialTLS(t, addr, services.TLSConfig{CAFile: ca.File})); u != codes.OK || s != codes.OK {
		t.Fatalf("client without a certificate on a server not requiring one: unary %v, stream %v", u, s)
	}
}

// peerCertName is the common name of the certificate the server presented on cc's last call.
func peerCertName(t *testing.T, cc *grpc.ClientConn) string {
	t.Helper()
	var p peer.Peer
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := testpb.NewTestServiceClient(cc).EmptyCall(ctx, &testpb.Empty{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	info := p.AuthInfo.(credentials.TLSInfo)
	return info.State.PeerCertificates[0].Subject.CommonName
}

func TestTLSReloadsRotatedCertificates(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	srvCert, srvKey := ca.Issue(t, "server-v1")
	cliCert, cliKey := ca.Issue(t, "client")
	addr := tlsServer(t, services.TLSConfig{CertFile: srvCert, KeyFile: srvKey, CAFile: ca.File, RequireClientCert: true})
	client := services.TLSConfig{CertFile: cliCert, KeyFile: cliKey, CAFile: ca.File}
	if got := peerCertName(t, dialTLS(t, addr, client)); got != "server-v1" {
		t.Fatalf("first certificate %q, want server-v1", got)
	}
	ca.IssueTo(t, "server-v2", srvCert, srvKey)
	future := time.Now().Add(time.Minute) // a distinct mtime even on coarse clocks
	for _, f := range []string{srvCert, srvKey} {
		if err := os.Chtimes(f, future, future); err != nil {
			t.Fatal(err)
		}
	}
	if got := peerCertName(t, dialTLS(t, addr, client)); got != "server-v2" {
		t.Fatalf("after rotation the server presents %q, want server-v2", got)
	}

	// a rotated CA: the server's client-certificate check follows the new file
	ca2 := tlstest.NewCA(t, "mesh2")
	cli2Cert, cli2Key := ca2.Issue(t, "client2")
	if u, _ := calls(t, dialTLS(t, addr, services.TLSConfig{CertFile: cli2Cert, KeyFile: cli2Key, CAFile: ca.File})); u != codes.Unavailable {
		t.Fatalf("client of a not yet trusted ca: %v, want Unavailable", u)
	}
	pem, err := os.ReadFile(ca2.File)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca.File, append(old, pem...), 0o600); err != nil {
		t.Fatal(err)
	}
	if u, _ := calls(t, dialTLS(t, addr, services.TLSConfig{CertFile: cli2Cert, KeyFile: cli2Key, CAFile: ca.File})); u != codes.OK {
		t.Fatalf("client of a ca added to the bundle: %v, want OK", u)
	}
}

func TestTLSConfigValidate(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	cert, key := ca.Issue(t, "x")
	cases := []struct {
		name string
		cfg  services.TLSConfig
		ok   bool
	}{
		{"off", services.TLSConfig{}, true},
		{"cert without key", services.TLSConfig{CertFile: cert}, false},
		{"mtls without ca", services.TLSConfig{CertFile: cert, KeyFile: key, RequireClientCert: true}, false},
		{"missing file", services.TLSConfig{CertFile: cert + ".missing", KeyFile: key}, false},
		{"ca not pem", services.TLSConfig{CAFile: key}, false},
		{"full", services.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.File, RequireClientCert: true}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := services.NewTLS(tc.cfg); (err == nil) != tc.ok {
				t.Fatalf("NewTLS: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7070": true, "[::1]:1": true, "localhost:80": true, "127.1.2.3:0": true,
		":7070": false, "0.0.0.0:7070": false, "10.0.0.2:7070": false, "[::]:1": false,
	} {
		if got := services.IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
