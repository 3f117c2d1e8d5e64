package services

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ErrTLS wraps every error of loading TLS material.
var ErrTLS = errors.New("services: tls")

// TLSConfig names the PEM files of a process's TLS identity and trust. The same files serve
// both ends: a server presents CertFile/KeyFile and, with CAFile, verifies client certificates;
// a client verifies the server against CAFile (the system roots without it) and presents
// CertFile/KeyFile when given. Every file is read again when its modification time changes, so
// rotated certificates take effect on the next handshake without a restart.
type TLSConfig struct {
	// CertFile and KeyFile are the PEM certificate chain and private key (both or neither).
	CertFile, KeyFile string
	// CAFile is the PEM bundle of the CA(s) that sign the mesh's certificates.
	CAFile string
	// RequireClientCert makes a server refuse every call but the health service from a client
	// without a certificate signed by CAFile (mTLS: only mesh members call attnd and expertd).
	// A client presenting a certificate that does not verify is refused at the handshake.
	RequireClientCert bool
	// ServerName is the name a client verifies in the server's certificate (default: the host
	// of the address it dials).
	ServerName string
}

// Enabled reports whether c turns TLS on (a certificate or a CA is named).
func (c TLSConfig) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" || c.CAFile != "" }

// Validate checks that the files named go together.
func (c TLSConfig) Validate() error {
	switch {
	case (c.CertFile == "") != (c.KeyFile == ""):
		return fmt.Errorf("%w: tls cert %q and key %q: give both or neither", ErrBadConfig, c.CertFile, c.KeyFile)
	case c.RequireClientCert && c.CAFile == "":
		return fmt.Errorf("%w: tls require_client_cert needs a ca file to verify client certificates", ErrBadConfig)
	}
	return nil
}

// TLS is the loaded, self-reloading TLS material of a TLSConfig: server and client transport
// credentials and a tls.Config for HTTP servers. Safe for concurrent use.
type TLS struct {
	cfg  TLSConfig
	cert *reloadingFile[*tls.Certificate]
	ca   *reloadingFile[*x509.CertPool]
}

// NewTLS loads cfg's files once (an error names the bad file) and returns the material; nil
// and no error when cfg turns nothing on.
func NewTLS(cfg TLSConfig) (*TLS, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &TLS{cfg: cfg}
	if cfg.CertFile != "" {
		t.cert = &reloadingFile[*tls.Certificate]{paths: []string{cfg.CertFile, cfg.KeyFile}, load: func() (*tls.Certificate, error) {
			c, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("%w: key pair %s, %s: %w", ErrTLS, cfg.CertFile, cfg.KeyFile, err)
			}
			return &c, nil
		}}
		if _, err := t.cert.get(); err != nil {
			return nil, err
		}
	}
	if cfg.CAFile != "" {
		t.ca = &reloadingFile[*x509.CertPool]{paths: []string{cfg.CAFile}, load: func() (*x509.CertPool, error) {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%w: ca %s: %w", ErrTLS, cfg.CAFile, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: ca %s: no PEM certificate in it", ErrTLS, cfg.CAFile)
			}
			return pool, nil
		}}
		if _, err := t.ca.get(); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Config is the TLSConfig t was made from.
func (t *TLS) Config() TLSConfig { return t.cfg }

// ClientCertOptional is t (the same files, reloaded together) for a server that verifies client
// certificates when given but does not require them: the client-facing gateway.
func (t *TLS) ClientCertOptional() *TLS {
	if t == nil {
		return nil
	}
	c := *t
	c.cfg.RequireClientCert = false
	return &c
}

// RequireClientCert reports whether servers built with t refuse calls without a verified
// client certificate.
func (t *TLS) RequireClientCert() bool { return t != nil && t.cfg.RequireClientCert }

// ServerTLSConfig is a tls.Config for a server (gRPC or HTTP): each handshake gets the current
// certificate and CA pool (GetConfigForClient), client certificates verified when given against
// the CA (required at the call level by the gRPC interceptor when RequireClientCert).
func (t *TLS) ServerTLSConfig(nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: nextProtos}
			if t.cert == nil {
				return nil, fmt.Errorf("%w: a server needs a certificate (--tls-cert, --tls-key)", ErrTLS)
			}
			cert, err := t.cert.get()
			if err != nil {
				return nil, err
			}
			c.Certificates = []tls.Certificate{*cert}
			if t.ca != nil {
				pool, err := t.ca.get()
				if err != nil {
					return nil, err
				}
				c.ClientCAs, c.ClientAuth = pool, tls.VerifyClientCertIfGiven
			}
			return c, nil
		},
	}
}

// clientTLSConfig is a fresh client tls.Config with the current CA pool and certificate.
func (t *TLS) clientTLSConfig() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.cfg.ServerName}
	if t.ca != nil {
		pool, err := t.ca.get()
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	if t.cert != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return t.cert.get() }
	}
	return c, nil
}

// ServerCreds are gRPC server transport credentials over ServerTLSConfig.
func (t *TLS) ServerCreds() credentials.TransportCredentials {
	return credentials.NewTLS(t.ServerTLSConfig("h2"))
}

// ClientCreds are gRPC client transport credentials: each handshake builds its tls.Config from
// the current files, so a rotated CA or client certificate is used by the next connection.
func (t *TLS) ClientCreds() credentials.TransportCredentials { return clientCreds{t: t} }

type clientCreds struct{ t *TLS }

func (c clientCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg, err := c.t.clientTLSConfig()
	if err != nil {
		return nil, nil, err
	}
	return credentials.NewTLS(cfg).ClientHandshake(ctx, authority, conn)
}

func (c clientCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, fmt.Errorf("%w: client credentials used on a server", ErrTLS)
}

func (c clientCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2", ServerName: c.t.cfg.ServerName}
}

func (c clientCreds) Clone() credentials.TransportCredentials { return c }

// OverrideServerName is deprecated in grpc; set TLSConfig.ServerName instead.
func (c clientCreds) OverrideServerName(string) error {
	return fmt.Errorf("%w: set the server name in TLSConfig", ErrTLS)
}

// reloadingFile caches what load makes of a set of files and loads again when one of their
// modification times (or sizes) changed since the last good load. A failed reload (a
// certificate written before its key, say) keeps serving the previous value and tries again
// on the next call.
type reloadingFile[T any] struct {
	paths []string
	load  func() (T, error)

	mu    sync.Mutex
	stamp string
	val   T
	ok    bool
}

func (r *reloadingFile[T]) get() (T, error) {
	var b strings.Builder
	for _, p := range r.paths {
		fi, err := os.Stat(p)
		if err != nil {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.ok {
				return r.val, nil
			}
			var zero T
			return zero, fmt.Errorf("%w: %w", ErrTLS, err)
		}
		fmt.Fprintf(&b, "%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	stamp := b.String()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ok && stamp == r.stamp {
		return r.val, nil
	}
	v, err := r.load()
	if err != nil {
		if r.ok {
			return r.val, nil
		}
		return v, err
	}
	r.val, r.stamp, r.ok = v, stamp, true
	return v, nil
}

// healthMethodPrefix is the gRPC health service, which clients without a certificate may
// call (load balancers, Consul, kubelet probes).
const healthMethodPrefix = "/grpc.health.v1.Health/"

// errNoClientCert is the refusal of a call without a verified client certificate.
var errNoClientCert = status.Error(codes.Unauthenticated, "services: this service requires a client certificate signed by the mesh CA (mTLS)")

// verifiedPeer reports whether ctx's peer presented a certificate that verified.
func verifiedPeer(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(info.State.VerifiedChains) > 0
}

// clientCertUnary and clientCertStream refuse every call but health from a peer without a
// verified client certificate with Unauthenticated.
func clientCertUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !strings.HasPrefix(info.FullMethod, healthMethodPrefix) && !verifiedPeer(ctx) {
		return nil, errNoClientCert
	}
	return handler(ctx, req)
}

func clientCertStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !strings.HasPrefix(info.FullMethod, healthMethodPrefix) && !verifiedPeer(ss.Context()) {
		return errNoClientCert
	}
	return handler(srv, ss)
}

// IsLoopback reports whether a listen address (host:port) binds only loopback: 127.0.0.0/8,
// ::1 or "localhost". An empty host (all interfaces) is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
