package services

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Defaults of ConsulConfig.
const (
	DefaultCheckInterval   = time.Second
	DefaultCheckTimeout    = time.Second
	DefaultDeregisterAfter = time.Minute
	DefaultWatchWait       = 30 * time.Second
	// ServicePrefix prefixes the Consul service name of every kind: "dlmesh-attnd".
	ServicePrefix = "dlmesh-"
)

// ErrConsul wraps errors talking to the Consul agent.
var ErrConsul = errors.New("services: consul")

// ConsulConfig configures a ConsulRegistry. Empty Addr, Token and Datacenter fall back to
// CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN and the agent's datacenter.
type ConsulConfig struct {
	Addr, Token, Datacenter string
	// CheckInterval and CheckTimeout are those of the gRPC health check Consul runs against
	// every registered instance (grpc.health.v1, the server's overall status).
	CheckInterval, CheckTimeout time.Duration
	// DeregisterAfter: Consul removes an instance whose check stays critical this long (a
	// process killed without deregistering). Consul reaps on a ~30 s cycle.
	DeregisterAfter time.Duration
	// Fingerprint, when set, keeps only instances whose meta "fingerprint" equals it (peers
	// serving another model are ignored).
	Fingerprint string
	// WatchWait is the blocking-query wait of Watch (DefaultWatchWait).
	WatchWait time.Duration
	// CheckTLS makes the health checks speak TLS (GRPCUseTLS), for instances serving TLS. The
	// health service needs no client certificate, so an mTLS instance passes too.
	CheckTLS bool
	// CheckTLSServerName is the name Consul verifies in the instance's certificate, against
	// the agent's own CA (its tls ca_file must hold the mesh CA); empty: Consul does not verify
	// the certificate (TLSSkipVerify), it only reads the health status.
	CheckTLSServerName string
}

// ConsulRegistry is the Registry backed by a Consul agent: instances are Consul services named
// ServicePrefix+kind with a gRPC health check; Instances and Watch see passing instances only.
type ConsulRegistry struct {
	c   *api.Client
	cfg ConsulConfig
}

var _ Registry = (*ConsulRegistry)(nil)

// NewConsulRegistry connects to the agent and checks that it answers.
func NewConsulRegistry(cfg ConsulConfig) (*ConsulRegistry, error) {
	ac := api.DefaultConfig()
	if cfg.Addr != "" {
		ac.Address = cfg.Addr
	}
	if cfg.Token != "" {
		ac.Token = cfg.Token
	}
	if cfg.Datacenter != "" {
		ac.Datacenter = cfg.Datacenter
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = DefaultCheckTimeout
	}
	if cfg.DeregisterAfter <= 0 {
		cfg.DeregisterAfter = DefaultDeregisterAfter
	}
	if cfg.WatchWait <= 0 {
		cfg.WatchWait = DefaultWatchWait
	}
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("%w: client for %s: %w", ErrConsul, ac.Address, err)
	}
	if _, err := c.Catalog().Datacenters(); err != nil {
		return nil, fmt.Errorf("%w: agent at %s does not answer (start one, or set --consul / CONSUL_HTTP_ADDR): %w", ErrConsul, ac.Address, err)
	}
	return &ConsulRegistry{c: c, cfg: cfg}, nil
}

// Client is the underlying Consul API client.
func (r *ConsulRegistry) Client() *api.Client { return r.c }

// Register registers in with a gRPC health check against its address. The instance is passing
// (and so discoverable) once its server reports SERVING.
func (r *ConsulRegistry) Register(ctx context.Context, in Instance) error {
	host, portS, err := net.SplitHostPort(in.Addr)
	if err != nil {
		return fmt.Errorf("%w: register %s: address %q: %w", ErrConsul, in.ID, in.Addr, err)
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return fmt.Errorf("%w: register %s: port %q: %w", ErrConsul, in.ID, portS, err)
	}
	meta := map[string]string{"kind": in.Kind, "version": buildVersion()}
	for k, v := range in.Meta {
		meta[k] = v
	}
	reg := &api.AgentServiceRegistration{
		ID: in.ID, Name: ServicePrefix + in.Kind, Tags: in.Tags, Meta: meta, Address: host, Port: port,
		Check: &api.AgentServiceCheck{
			Name:                           in.ID + " grpc health",
			GRPC:                           in.Addr,
			Interval:                       r.cfg.CheckInterval.String(),
			Timeout:                        r.cfg.CheckTimeout.String(),
			DeregisterCriticalServiceAfter: r.cfg.DeregisterAfter.String(),
		},
	}
	if r.cfg.CheckTLS {
		reg.Check.GRPCUseTLS = true
		reg.Check.TLSServerName = r.cfg.CheckTLSServerName
		reg.Check.TLSSkipVerify = r.cfg.CheckTLSServerName == ""
	}
	if err := r.c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("%w: register %s: %w", ErrConsul, in.ID, err)
	}
	return nil
}

// Deregister removes an instance; an unknown id is not an error.
func (r *ConsulRegistry) Deregister(ctx context.Context, id string) error {
	err := r.c.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil && !strings.Contains(err.Error(), "404") && !strings.Contains(strings.ToLower(err.Error()), "unknown service") {
		return fmt.Errorf("%w: deregister %s: %w", ErrConsul, id, err)
	}
	return nil
}

// Instances lists the passing instances of kind.
func (r *ConsulRegistry) Instances(ctx context.Context, kind string) ([]Instance, error) {
	list, _, err := r.query(ctx, kind, 0)
	return list, err
}

func (r *ConsulRegistry) query(ctx context.Context, kind string, index uint64) ([]Instance, uint64, error) {
	if kind == "" {
		return nil, 0, fmt.Errorf("%w: a kind is required", ErrConsul)
	}
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: r.cfg.WatchWait}).WithContext(ctx)
	entries, meta, err := r.c.Health().Service(ServicePrefix+kind, "", true, q)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: health of %s: %w", ErrConsul, ServicePrefix+kind, err)
	}
	list := make([]Instance, 0, len(entries))
	for _, e := range entries {
		s := e.Service
		if r.cfg.Fingerprint != "" && s.Meta["fingerprint"] != r.cfg.Fingerprint {
			continue
		}
		addr := s.Address
		if addr == "" {
			addr = e.Node.Address
		}
		in := Instance{ID: s.ID, Kind: kind, Addr: net.JoinHostPort(addr, strconv.Itoa(s.Port)),
			Tags: slices.Clone(s.Tags), Meta: map[string]string{}}
		for k, v := range s.Meta {
			in.Meta[k] = v
		}
		list = append(list, in)
	}
	slices.SortFunc(list, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return list, meta.LastIndex, nil
}

// Watch follows the passing instances of kind with blocking queries: the current set first,
// then the whole set after every change; the channel closes when ctx ends. A receiver that is
// slow gets only the latest set. Errors are retried with backoff (the last set stays valid).
func (r *ConsulRegistry) Watch(ctx context.Context, kind string) (<-chan []Instance, error) {
	list, index, err := r.query(ctx, kind, 0)
	if err != nil {
		return nil, err
	}
	ch := make(chan []Instance, 1)
	ch <- list
	go func() {
		defer close(ch)
		last := list
		backoff := 100 * time.Millisecond
		for ctx.Err() == nil {
			next, ni, err := r.query(ctx, kind, index)
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
			if ni < index { // the index went backwards (agent restart): start over
				ni = 0
			}
			index = ni
			if sameInstances(last, next) {
				continue
			}
			last = next
			select { // replace a set the receiver has not taken yet
			case <-ch:
			default:
			}
			select {
			case ch <- next:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// buildVersion is the main module's version ("(devel)" for a source build) and VCS revision.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v
}

func sameInstances(a, b []Instance) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ID != b[i].ID || a[i].Addr != b[i].Addr {
			return false
		}
	}
	return true
}
