// Package mesh runs a whole dlmesh mesh in one process: one expertd per expert group (the experts
// split evenly: 16 experts in 2 groups are 0-7 and 8-15), one attnd (or more) and the gateway, each a real
// gRPC server on its own loopback port, wired through an in-process services.MemRegistry (attnd
// discovers the expertd instances, the gateway the attnd). It is `dlmesh up`, and the fixture for
// the mesh's end-to-end tests and benchmarks.
//
// Every service registers and deregisters itself (its services.Node); Close shuts them down in
// the order HTTP API, gateway, attnd, expertd.
//
// Who may import: cmd/dlmesh, tests. It imports attnd, expertd, gateway (and its httpapi), services,
// kernels, model.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/gateway/httpapi"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
	"github.com/dlmesh/dlmesh/services"
)

// Defaults of Config.
const (
	DefaultGroups        = 2
	DefaultReplicas      = 1
	DefaultAttnd         = 1
	DefaultListen        = gateway.DefaultListen
	DefaultServiceListen = "127.0.0.1:0"
	DefaultReadyTimeout  = 60 * time.Second
	DefaultStopTimeout   = 10 * time.Second
)

// ErrBadConfig wraps every Config.Validate error.
var ErrBadConfig = errors.New("mesh: invalid config")

// Config configures an embedded mesh.
type Config struct {
	// ModelDir is the checkpoint (and tokenizer) directory.
	ModelDir string
	// Groups is the number of expert groups (DefaultGroups); Replicas the expertd replicas of
	// each group (DefaultReplicas).
	Groups   int
	Replicas int
	// Attnd is the number of attnd instances (DefaultAttnd); the gateway spreads new sessions
	// over them (fewest open first) and a session stays on its attnd.
	Attnd int
	// Listen is the gateway's address (DefaultListen).
	Listen string
	// HTTPListen is the address of the gateway's OpenAI-compatible HTTP API (httpapi); empty
	// serves none. APIKey, when set, is required on it and on gRPC Generate.
	HTTPListen string
	APIKey     string
	// AttndListen and ExpertdListen are the base addresses of the attnd instances and of the
	// expertd replicas (DefaultServiceListen: a free loopback port each). With a non-zero port P
	// the i-th instance (expertd in Experts order) listens on port P+i.
	AttndListen   string
	ExpertdListen string
	// Reflection registers the gRPC reflection service on every server (off by default).
	Reflection bool
	// TLS, when set, is every service's identity and mesh CA: all servers serve TLS, attnd and
	// expertd require client certificates when it says so (mTLS), and attnd and the gateway
	// dial their peers with it. The gateway verifies a client certificate only when given.
	TLS *services.TLS
	// GatewayTLS, when set, is what the gateway's gRPC server and the HTTP API serve instead of
	// TLS (the client-facing side may use another certificate or trust than the mesh inside:
	// `dlmesh up` serves its flags as given there and trusts its own certificate inside).
	GatewayTLS *services.TLS
	// MaxActive and MaxQueue bound the gateway's engine (gateway defaults).
	MaxActive int
	MaxQueue  int
	// WireBF16 sends the expert rows as bf16 (attnd.Config.WireBF16).
	WireBF16 bool
	// KVDType and ExpertActDType are the precision modes of attnd's KV caches and of the
	// experts' activations (attnd.Config.KVDType, expertd.Config.ExpertActDType): 0 is exact.
	KVDType, ExpertActDType kernels.DType
	// DrainTimeout is each attnd's drain on a graceful stop (attnd.Config.DrainTimeout): 0, the
	// default, stops without waiting for the gateway to migrate the sessions.
	DrainTimeout time.Duration
	// ReadyTimeout bounds the wait for attnd to see every expert (DefaultReadyTimeout).
	ReadyTimeout time.Duration
	// StopTimeout bounds each service's graceful stop in Close (DefaultStopTimeout).
	StopTimeout time.Duration
	// Backend makes a kernels backend; every service gets its own. nil means the CPU backend.
	Backend func() (kernels.Backend, error)
	// TracerProvider traces every service; nil means the global provider.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Groups == 0 {
		c.Groups = DefaultGroups
	}
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.Attnd == 0 {
		c.Attnd = DefaultAttnd
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.AttndListen == "" {
		c.AttndListen = DefaultServiceListen
	}
	if c.ExpertdListen == "" {
		c.ExpertdListen = DefaultServiceListen
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	return c
}

// Validate checks c (zero fields are fine: they take the defaults); Groups is checked against
// the model's expert count by Up.
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.ModelDir == "":
		return fmt.Errorf("%w: model_dir is empty", ErrBadConfig)
	case c.Groups < 1:
		return fmt.Errorf("%w: groups %d: want at least 1", ErrBadConfig, c.Groups)
	case c.Replicas < 1:
		return fmt.Errorf("%w: replicas %d: want at least 1", ErrBadConfig, c.Replicas)
	case c.Attnd < 1 || c.Attnd > 64:
		return fmt.Errorf("%w: attnd %d: want 1 to 64 instances", ErrBadConfig, c.Attnd)
	case c.ReadyTimeout < 0 || c.StopTimeout < 0:
		return fmt.Errorf("%w: ready_timeout %v and stop_timeout %v: want positive durations", ErrBadConfig, c.ReadyTimeout, c.StopTimeout)
	}
	if err := checkBase("attnd_listen", c.AttndListen, c.Attnd); err != nil {
		return err
	}
	return checkBase("expertd_listen", c.ExpertdListen, c.Groups*c.Replicas)
}

// checkBase checks a base listen address for n instances: host:port with the ports port …
// port+n-1 all valid (port 0: each instance gets a free port).
func checkBase(field, base string, n int) error {
	_, p, err := net.SplitHostPort(base)
	if err != nil {
		return fmt.Errorf("%w: %s %q: want host:port", ErrBadConfig, field, base)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 || (port > 0 && port+n-1 > 65535) {
		return fmt.Errorf("%w: %s %q: want a port in [0, 65535] (and port+%d at most 65535 for %d instances)", ErrBadConfig, field, base, n-1, n)
	}
	return nil
}

// nthAddr is the listen address of the i-th instance on base (validated by checkBase).
func nthAddr(base string, i int) string {
	host, p, _ := net.SplitHostPort(base)
	port, _ := strconv.Atoi(p)
	if port == 0 {
		return base
	}
	return net.JoinHostPort(host, strconv.Itoa(port+i))
}

// Mesh is a running embedded mesh.
type Mesh struct {
	cfg      Config
	Registry *services.MemRegistry
	Experts  []*expertd.Server // group-major: group g replica r at g·Replicas+r
	Attnd    *attnd.Server     // Attnds[0]
	Attnds   []*attnd.Server   // attnd-0, attnd-1, …
	Gateway  *gateway.Server
	HTTP     *httpapi.Server // nil without Config.HTTPListen
}

// Addrs are the listen addresses of a mesh's services.
type Addrs struct {
	Gateway string
	HTTP    string   // the OpenAI-compatible API; empty when not served
	Attnd   string   // Attnds[0]
	Attnds  []string // in Mesh.Attnds order
	Expertd []string // in Mesh.Experts order
}

// Up starts the mesh: the expertd replicas, then attnd (waiting until it sees every expert),
// then the gateway. On error everything started is shut down.
func Up(ctx context.Context, cfg Config) (_ *Mesh, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	mc, err := model.LoadConfig(cfg.ModelDir)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	groups, err := model.SplitExperts(mc.Experts, cfg.Groups)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	m := &Mesh{cfg: cfg, Registry: services.NewMemRegistry()}
	srv := services.ServerConfig{Reflection: cfg.Reflection, StopTimeout: cfg.StopTimeout, TLS: cfg.TLS}
	gwSrv := srv
	gwSrv.TLS = cfg.TLS.ClientCertOptional()
	if cfg.GatewayTLS != nil {
		gwSrv.TLS = cfg.GatewayTLS
	}
	client := services.ClientConfig{TLS: cfg.TLS}
	defer func() {
		if err != nil {
			err = errors.Join(err, m.Close())
		}
	}()
	for g, ids := range groups {
		for r := 0; r < cfg.Replicas; r++ {
			e, err := expertd.New(ctx, expertd.Config{ModelDir: cfg.ModelDir, Experts: ids, Group: fmt.Sprint(g),
				ID: fmt.Sprintf("expertd-g%d-r%d", g, r), Listen: nthAddr(cfg.ExpertdListen, g*cfg.Replicas+r), Server: srv,
				NewBackend: cfg.Backend, ExpertActDType: cfg.ExpertActDType, TracerProvider: cfg.TracerProvider}, m.Registry)
			if err != nil {
				return nil, fmt.Errorf("mesh: expertd group %d: %w", g, err)
			}
			m.Experts = append(m.Experts, e)
		}
	}
	for i := range cfg.Attnd {
		a, err := attnd.New(ctx, attnd.Config{ModelDir: cfg.ModelDir, ID: fmt.Sprint("attnd-", i), WireBF16: cfg.WireBF16,
			Listen: nthAddr(cfg.AttndListen, i), Server: srv, Client: client, NewBackend: cfg.Backend, KVDType: cfg.KVDType,
			TracerProvider: cfg.TracerProvider, DrainTimeout: cfg.DrainTimeout}, m.Registry)
		if err != nil {
			return nil, fmt.Errorf("mesh: %w", err)
		}
		m.Attnds = append(m.Attnds, a)
	}
	m.Attnd = m.Attnds[0]
	rctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	for _, a := range m.Attnds {
		if err := a.WaitServing(rctx); err != nil {
			return nil, fmt.Errorf("mesh: %w", err)
		}
	}
	if m.Gateway, err = gateway.New(ctx, gateway.Config{ModelDir: cfg.ModelDir, ID: "gateway-0", Listen: cfg.Listen, Server: gwSrv, Client: client,
		MaxActive: cfg.MaxActive, MaxQueue: cfg.MaxQueue, APIKey: cfg.APIKey, TracerProvider: cfg.TracerProvider}, m.Registry); err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	if cfg.HTTPListen != "" {
		if m.HTTP, err = httpapi.New(httpapi.Config{Listen: cfg.HTTPListen, Model: ModelName(cfg.ModelDir), APIKey: cfg.APIKey,
			StopTimeout: cfg.StopTimeout, TLS: gwSrv.TLS}, m.Gateway); err != nil {
			return nil, fmt.Errorf("mesh: %w", err)
		}
	}
	return m, nil
}

// ModelName is the model id the HTTP API serves a model directory under: the directory's name.
func ModelName(dir string) string {
	if name := filepath.Base(filepath.Clean(dir)); name != "." && name != string(filepath.Separator) {
		return name
	}
	return "dlmesh"
}

// Addrs returns the services' listen addresses.
func (m *Mesh) Addrs() Addrs {
	a := Addrs{}
	if m.Gateway != nil {
		a.Gateway = m.Gateway.Addr()
	}
	if m.HTTP != nil {
		a.HTTP = m.HTTP.Addr()
	}
	for _, s := range m.Attnds {
		a.Attnds = append(a.Attnds, s.Addr())
	}
	if len(a.Attnds) > 0 {
		a.Attnd = a.Attnds[0]
	}
	for _, e := range m.Experts {
		a.Expertd = append(a.Expertd, e.Addr())
	}
	return a
}

// Close stops the services gracefully in the order gateway, attnd, expertd, each within
// Config.StopTimeout.
func (m *Mesh) Close() error {
	var errs []error
	stop := func(f func(context.Context) error) {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StopTimeout)
		defer cancel()
		errs = append(errs, f(ctx))
	}
	if m.HTTP != nil {
		stop(m.HTTP.Shutdown)
	}
	if m.Gateway != nil {
		stop(m.Gateway.Shutdown)
	}
	for _, a := range m.Attnds {
		stop(a.Shutdown)
	}
	for i, e := range m.Experts {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StopTimeout)
		if err := e.Shutdown(ctx); err != nil { // deregisters, then drains
			errs = append(errs, fmt.Errorf("mesh: expertd %d: %w", i, err))
		}
		cancel()
	}
	return errors.Join(errs...)
}
