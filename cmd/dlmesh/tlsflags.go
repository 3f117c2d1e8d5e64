package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/services"
)

// tlsFlags are the TLS files of a command: a service's identity and mesh CA, or a client's.
type tlsFlags struct {
	cert, key, ca, serverName string
}

// register adds --tls-cert, --tls-key, --tls-ca (and --tls-server-name) to cmd; server says
// whether the command serves (the help texts differ).
func (f *tlsFlags) register(cmd *cobra.Command, server bool) {
	fl := cmd.Flags()
	if server {
		fl.StringVar(&f.cert, "tls-cert", "", "PEM certificate: serve TLS with it and present it to the peers this service calls (reloaded on change)")
		fl.StringVar(&f.key, "tls-key", "", "PEM private key of --tls-cert")
		fl.StringVar(&f.ca, "tls-ca", "", "PEM CA bundle verifying peers; attnd and expertd then require client certificates it signed (mTLS)")
	} else {
		fl.StringVar(&f.cert, "tls-cert", "", "PEM client certificate to present (with --tls-key)")
		fl.StringVar(&f.key, "tls-key", "", "PEM private key of --tls-cert")
		fl.StringVar(&f.ca, "tls-ca", "", "PEM CA bundle verifying the server; setting it (or --tls-cert) dials TLS")
	}
	fl.StringVar(&f.serverName, "tls-server-name", "", "name verified in the certificates of the servers dialled (default: the host dialled)")
}

// load builds the TLS material (nil when no flag is set); requireClientCert makes the servers
// built with it refuse calls without a verified client certificate.
func (f *tlsFlags) load(requireClientCert bool) (*services.TLS, error) {
	return services.NewTLS(services.TLSConfig{CertFile: f.cert, KeyFile: f.key, CAFile: f.ca,
		RequireClientCert: requireClientCert && f.ca != "", ServerName: f.serverName})
}

// client is the client configuration of a command that only dials (generate, health, status).
func (f *tlsFlags) client() (services.ClientConfig, error) {
	t, err := f.load(false)
	return services.ClientConfig{TLS: t}, err
}

// mesh is the TLS of the services inside `dlmesh up`: every server and client uses --tls-cert,
// verifies peers against --tls-ca or, without one, against --tls-cert itself (the process is the
// mesh's only member), and attnd and expertd require client certificates (mTLS). nil without
// TLS flags; --tls-ca alone is an error (the services need a certificate to serve).
func (f *tlsFlags) mesh() (*services.TLS, error) {
	if f.cert == "" && f.key == "" && f.ca == "" {
		return nil, nil
	}
	if f.cert == "" || f.key == "" {
		return nil, fmt.Errorf("--tls-cert %q and --tls-key %q: up serves TLS with them, give both (with --tls-ca or without)", f.cert, f.key)
	}
	return services.NewTLS(services.TLSConfig{CertFile: f.cert, KeyFile: f.key, CAFile: f.trust(),
		RequireClientCert: true, ServerName: f.serverName})
}

// trust is the CA file that verifies up's certificate: --tls-ca, or --tls-cert itself.
func (f *tlsFlags) trust() string {
	if f.ca != "" {
		return f.ca
	}
	return f.cert
}
