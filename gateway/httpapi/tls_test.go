package httpapi_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/gateway/httpapi"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/tlstest"
)

// TestServesTLS: with Config.TLS the API answers HTTPS (HTTP/2 and HTTP/1.1) to a client
// trusting the CA, and a plain HTTP request gets no answer from it.
func TestServesTLS(t *testing.T) {
	tok, err := tinyTok()
	if err != nil {
		t.Fatal(err)
	}
	ca := tlstest.NewCA(t, "mesh")
	cert, key := ca.Issue(t, "gateway")
	tl, err := services.NewTLS(services.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	s, err := httpapi.New(httpapi.Config{Listen: "127.0.0.1:0", Model: model, TLS: tl}, &fakeBackend{tok: tok, ready: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	pem, err := os.ReadFile(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	for _, h2 := range []bool{true, false} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := c.Get("https://" + s.Addr() + "/v1/models")
		if err != nil {
			t.Fatalf("https (h2 %v): %v", h2, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || (resp.ProtoMajor == 2) != h2 {
			t.Errorf("https (h2 %v): %s over %s", h2, resp.Status, resp.Proto)
		}
	}
	c := &http.Client{Timeout: 5 * time.Second}
	if resp, err := c.Get("http://" + s.Addr() + "/v1/models"); err == nil && resp.StatusCode == http.StatusOK {
		resp.Body.Close()
		t.Error("plain http answered 200 on a TLS listener")
	}
}
