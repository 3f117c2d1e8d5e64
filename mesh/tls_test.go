package mesh_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
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

const tlsAPIKey = "sk-tls-test"

// withKey is ctx carrying the gateway API key as gRPC metadata.
func withKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// TestMeshWithMTLS runs a fixture case through gateway → attnd → expertd with TLS everywhere,
// mTLS between the services and an API key on the gateway, then calls attnd and expertd
// directly as outsiders: without a certificate (Unauthenticated), with one of another CA
// (refused at the handshake), in plaintext (refused), and as a member (answered); and the
// gateway over TLS with a wrong or no API key, over gRPC and over the HTTP API.
func TestMeshWithMTLS(t *testing.T) {
	ca, other := tlstest.NewCA(t, "mesh"), tlstest.NewCA(t, "other")
	cert, key := ca.Issue(t, "member")
	strCert, strKey := other.Issue(t, "stranger")
	member := services.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.File}
	meshTLS := member
	meshTLS.RequireClientCert = true
	m := upMesh(t, mesh.Config{TLS: newTLS(t, meshTLS), APIKey: tlsAPIKey, HTTPListen: "127.0.0.1:0"})

	f := fixtures.LoadGen(t)
	gc := f.Cases[0]
	// an end user: verifies the gateway, presents no certificate
	user, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{TLS: newTLS(t, services.TLSConfig{CAFile: ca.File})})
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	s, err := generate(withKey(t.Context(), tlsAPIKey), user, request(gc, "tls-0"))
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
	if _, err := generate(withKey(ctx, tlsAPIKey), plain, request(gc, "plain")); status.Code(err) != codes.Unavailable {
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
	t.Run("grpc api key", func(t *testing.T) { grpcKeyOverTLS(t, user) })
	t.Run("http api key", func(t *testing.T) { httpKeyOverTLS(t, m.Addrs().HTTP, ca.File) })
}

// grpcKeyOverTLS: over the TLS connection c, Generate with a wrong or no key is refused with
// Unauthenticated before it runs; the right key generates.
func grpcKeyOverTLS(t *testing.T, c *gateway.Client) {
	for _, tc := range []struct {
		name string
		ctx  func(context.Context) context.Context
		want codes.Code
	}{
		{"wrong key", func(ctx context.Context) context.Context { return withKey(ctx, "sk-wrong") }, codes.Unauthenticated},
		{"no key", func(ctx context.Context) context.Context { return ctx }, codes.Unauthenticated},
		{"key without bearer", func(ctx context.Context) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", tlsAPIKey)
		}, codes.Unauthenticated},
		{"right key", func(ctx context.Context) context.Context { return withKey(ctx, tlsAPIKey) }, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			s, err := generate(tc.ctx(ctx), c, shortRequest("s", 8, 8, "key-"+tc.name))
			if got := status.Code(err); got != tc.want {
				t.Fatalf("Generate: %v, want %v", err, tc.want)
			}
			switch {
			case tc.want == codes.OK && (s.final == nil || len(s.steps) == 0):
				t.Errorf("right key: %d steps and final %v, want a generation", len(s.steps), s.final)
			case tc.want != codes.OK && (len(s.steps) > 0 || s.final != nil):
				t.Errorf("refused call streamed %d steps and final %v", len(s.steps), s.final)
			case tc.want != codes.OK && !strings.Contains(status.Convert(err).Message(), "API key"):
				t.Errorf("refusal %q does not name the API key", status.Convert(err).Message())
			}
		})
	}
}

// httpKeyOverTLS: the HTTP API over HTTPS answers a wrong key (openai-go) and a missing one
// (net/http) with 401 and an OpenAI-shaped invalid_api_key error, and the right key completes.
func httpKeyOverTLS(t *testing.T, addr, caFile string) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	base := "https://" + addr + "/v1/"
	prompt := openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(mesh.ModelName(tinyDir)), MaxTokens: openai.Int(8), Temperature: openai.Float(0),
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("func main() {")}}

	t.Run("wrong key", func(t *testing.T) {
		c := openai.NewClient(option.WithBaseURL(base), option.WithHTTPClient(hc), option.WithAPIKey("sk-wrong"), option.WithMaxRetries(0))
		_, err := c.Completions.New(t.Context(), prompt)
		var ae *openai.Error
		if !errors.As(err, &ae) {
			t.Fatalf("wrong key: %v, want an API error", err)
		}
		if ae.StatusCode != http.StatusUnauthorized || ae.Code != "invalid_api_key" || ae.Type != "invalid_request_error" ||
			!strings.Contains(ae.Message, "incorrect API key") {
			t.Errorf("wrong key: %d code %q type %q message %q, want 401 invalid_api_key invalid_request_error", ae.StatusCode, ae.Code, ae.Type, ae.Message)
		}
	})
	t.Run("no key", func(t *testing.T) {
		resp, err := hc.Post(base+"completions", "application/json", strings.NewReader(`{"model":"llada2-tiny-go","prompt":"a","max_tokens":8}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Error *struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
				Code    *string `json:"code"`
			} `json:"error"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("401 body: %v", err)
		}
		if resp.StatusCode != http.StatusUnauthorized || resp.ProtoMajor != 2 || body.Error == nil || body.Error.Code == nil ||
			*body.Error.Code != "invalid_api_key" || body.Error.Type != "invalid_request_error" || body.Error.Message == "" {
			t.Errorf("no key: %s over %s, error %+v, want 401 over HTTP/2 with an invalid_api_key error", resp.Status, resp.Proto, body.Error)
		}
		if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
			t.Errorf("WWW-Authenticate %q, want Bearer", got)
		}
	})
	t.Run("right key", func(t *testing.T) {
		c := openai.NewClient(option.WithBaseURL(base), option.WithHTTPClient(hc), option.WithAPIKey(tlsAPIKey), option.WithMaxRetries(0))
		res, err := c.Completions.New(t.Context(), prompt)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Choices) != 1 || res.Usage.CompletionTokens == 0 {
			t.Errorf("right key: %+v, want one choice with completion tokens", res)
		}
	})
}
