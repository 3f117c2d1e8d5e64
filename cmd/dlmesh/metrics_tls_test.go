package main

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/tlstest"
)

// httpsClient is an HTTP client trusting caFile and presenting certFile/keyFile when given.
func httpsClient(tb testing.TB, caFile, certFile, keyFile string) *http.Client {
	tb.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		tb.Fatalf("no certificate in %s", caFile)
	}
	cfg := &tls.Config{RootCAs: pool}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			tb.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestMetricsTLS serves /metrics with a service's TLS: with a CA only to clients presenting a
// certificate it signed (a member's scrape parses and holds the service's collector), without
// one over HTTPS to any client; plain HTTP is never answered with metrics.
func TestMetricsTLS(t *testing.T) {
	ca, other := tlstest.NewCA(t, "mesh"), tlstest.NewCA(t, "other")
	cert, key := ca.Issue(t, "member")
	strCert, strKey := other.Issue(t, "stranger")
	counter := prometheus.NewCounter(prometheus.CounterOpts{Name: "dlmesh_test_scrapes_total", Help: "A counter the scrape must find."})
	counter.Add(3)

	for _, tc := range []struct {
		name    string
		cfg     services.TLSConfig
		clients map[string]*http.Client // name → client; the "ok" ones must scrape
		ok      []string
	}{
		{"mtls", services.TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.File}, map[string]*http.Client{
			"member":                 httpsClient(t, ca.File, cert, key),
			"no client certificate":  httpsClient(t, ca.File, "", ""),
			"certificate of another": httpsClient(t, ca.File, strCert, strKey),
		}, []string{"member"}},
		{"tls without ca", services.TLSConfig{CertFile: cert, KeyFile: key}, map[string]*http.Client{
			"no client certificate": httpsClient(t, ca.File, "", ""),
			"member":                httpsClient(t, ca.File, cert, key),
		}, []string{"no client certificate", "member"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl, err := services.NewTLS(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			addr, stop, err := listenMetrics("127.0.0.1:0", tl, counter)
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			for name, c := range tc.clients {
				mfs, err := scrapeURL(c, "https://"+addr+"/metrics")
				want := slices.Contains(tc.ok, name)
				switch {
				case want && err != nil:
					t.Errorf("%s: %v, want a scrape", name, err)
				case want && sum(mfs["dlmesh_test_scrapes_total"].GetMetric()) != 3:
					t.Errorf("%s: dlmesh_test_scrapes_total %v, want 3", name, mfs["dlmesh_test_scrapes_total"])
				case want && len(mfs["go_goroutines"].GetMetric()) == 0:
					t.Errorf("%s: no go_goroutines in the scrape", name)
				case !want && err == nil:
					t.Errorf("%s: scraped %d families, want a refusal", name, len(mfs))
				}
			}
			if mfs, err := scrapeURL(&http.Client{Timeout: 5 * time.Second}, "http://"+addr+"/metrics"); err == nil {
				t.Errorf("plain http scraped %d families from a TLS endpoint", len(mfs))
			}
		})
	}
}

// TestMetricsWarnsWhenExposed: the endpoint on a non-loopback address without TLS logs a
// warning naming --tls-cert; with TLS, or on loopback, it does not warn.
func TestMetricsWarnsWhenExposed(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	cert, key := ca.Issue(t, "member")
	tl, err := services.NewTLS(services.TLSConfig{CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	var buf syncBuffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })
	for _, tc := range []struct {
		name, addr string
		tls        *services.TLS
		warn       bool
	}{
		{"loopback plain", "127.0.0.1:0", nil, false},
		{"all interfaces plain", "0.0.0.0:0", nil, true},
		{"all interfaces tls", "0.0.0.0:0", tl, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(buf.String())
			_, stop, err := listenMetrics(tc.addr, tc.tls)
			if err != nil {
				t.Fatal(err)
			}
			stop()
			logged := buf.String()[before:]
			warned := strings.Contains(logged, "level=WARN") && strings.Contains(logged, "--tls-cert")
			if warned != tc.warn {
				t.Errorf("warned %v, want %v; log:\n%s", warned, tc.warn, logged)
			}
		})
	}
}
