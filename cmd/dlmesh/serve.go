package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/gateway/httpapi"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/mesh"
	"github.com/dlmesh/dlmesh/model"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tracing"
)

func init() {
	extraCommands = append(extraCommands, upCmd, gatewayCmd, attndCmd, expertdCmd)
}

// common are the flags every service command shares.
type common struct {
	dir, backend   string
	traceFile      string
	otlp           string
	consul         string
	consulToken    string
	consulDC       string
	stopTimeoutSec int
	idleTrim       time.Duration
	metrics        string
	reflection     bool
	tls            tlsFlags
	// mtls is the loaded TLS material (setup loads it): nil without TLS flags.
	mtls *services.TLS
}

func (c *common) register(cmd *cobra.Command, service string) {
	f := cmd.Flags()
	f.StringVar(&c.dir, "model", "", "model directory (default: the bundled llada2-tiny-go)")
	f.StringVar(&c.backend, "backend", "cpu", "kernels backend: cpu or cuda[:N]")
	f.StringVar(&c.traceFile, "trace-file", "", "append every span as one JSON line to this file")
	f.StringVar(&c.otlp, "otlp-endpoint", os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "export spans over OTLP/gRPC to host:port")
	f.IntVar(&c.stopTimeoutSec, "stop-timeout", 10, "seconds a graceful stop may take on SIGTERM")
	f.StringVar(&c.metrics, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (empty: none); with --tls-cert over HTTPS, and with --tls-ca only to clients presenting a certificate it signed")
	f.BoolVar(&c.reflection, "reflection", false, "register the gRPC reflection service (for grpcurl) on every server")
	c.tls.register(cmd, true)
	if service != "up" {
		f.DurationVar(&c.idleTrim, "idle-trim", services.DefaultIdleTrim, "after mesh work, return freed memory to the OS once traffic has been quiet this long (negative: never)")
	}
	if service != "up" {
		f.StringVar(&c.consul, "consul", os.Getenv("CONSUL_HTTP_ADDR"), "Consul agent address for discovery and health (default $CONSUL_HTTP_ADDR; empty: static peers)")
		f.StringVar(&c.consulToken, "consul-token", "", "Consul ACL token (default $CONSUL_HTTP_TOKEN)")
		f.StringVar(&c.consulDC, "consul-datacenter", "", "Consul datacenter (default: the agent's)")
	}
}

// registry is Consul when --consul (or CONSUL_HTTP_ADDR) is set, else a static registry of
// the given peer addresses of kind.
func (c *common) registry(ctx context.Context, kind, flag, peers string) (services.Registry, error) {
	if c.consul != "" {
		fp, err := model.Fingerprint(c.dir)
		if err != nil {
			return nil, err
		}
		return services.NewConsulRegistry(services.ConsulConfig{Addr: c.consul, Token: c.consulToken, Datacenter: c.consulDC, Fingerprint: fp,
			CheckTLS: c.mtls != nil, CheckTLSServerName: c.tls.serverName})
	}
	if peers == "" {
		return nil, fmt.Errorf("no peers: pass --consul ADDR (or set CONSUL_HTTP_ADDR) or the static %s address(es)", flag)
	}
	return staticRegistry(ctx, kind, strings.Split(peers, ","))
}

// setup resolves the model directory and installs tracing for service.
func (c *common) setup(ctx context.Context, service string) (func(), error) {
	d, err := resolveModelDir(c.dir)
	if err != nil {
		return nil, err
	}
	c.dir = d
	// attnd and expertd require mesh client certificates when a CA is given; the gateway
	// verifies them when presented (its clients authenticate with an API key).
	if c.mtls, err = c.tls.load(service == "attnd" || service == "expertd"); err != nil {
		return nil, err
	}
	shutdown, err := tracing.Setup(ctx, tracing.Config{ServiceName: service, OTLPEndpoint: strings.TrimPrefix(c.otlp, "http://"), File: c.traceFile})
	if err != nil {
		return nil, err
	}
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdown(sctx)
	}, nil
}

func (c *common) backendFactory() func() (kernels.Backend, error) {
	name := c.backend
	return func() (kernels.Backend, error) { return newBackend(name) }
}

// server is the gRPC server configuration the flags set.
func (c *common) server() services.ServerConfig {
	return services.ServerConfig{Reflection: c.reflection, StopTimeout: time.Duration(c.stopTimeoutSec) * time.Second, TLS: c.mtls, IdleTrim: c.idleTrim}
}

// serve exports the started service's metrics until ctx ends (SIGINT, SIGTERM), then shuts it
// down (its node: NOT_SERVING, deregistration, graceful stop within --stop-timeout).
func (c *common) serve(ctx context.Context, shutdown func(context.Context) error, cs ...prometheus.Collector) error {
	stopMetrics, err := serveMetrics(c.metrics, c.mtls, cs...)
	if err != nil {
		return errors.Join(err, shutdown(context.Background()))
	}
	defer stopMetrics()
	<-ctx.Done()
	return shutdown(context.Background())
}

// staticRegistry is an in-process registry holding fixed peer addresses (until Consul
// discovery is configured): each address becomes one instance of kind.
func staticRegistry(ctx context.Context, kind string, addrs []string) (*services.MemRegistry, error) {
	reg := services.NewMemRegistry()
	for i, a := range addrs {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if err := reg.Register(ctx, services.Instance{ID: fmt.Sprintf("%s-static-%d", kind, i), Kind: kind, Addr: a}); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// reportGatewayReady logs "gateway serving" once an attnd answers SERVING; until then it warns,
// every 30 s after the first 5 s, that requests fail.
func reportGatewayReady(ctx context.Context, s *gateway.Server) {
	wait := 5 * time.Second
	for ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, wait)
		id, err := s.WaitAttnd(wctx, 0)
		cancel()
		if err == nil {
			slog.Info("gateway serving", "addr", s.Addr(), "attnd", id)
			return
		}
		if ctx.Err() == nil {
			slog.Warn("gateway degraded: no attnd serves; requests fail with Unavailable", "addr", s.Addr(), "err", err)
		}
		wait = 30 * time.Second
	}
}

func upCmd() *cobra.Command {
	var c common
	var cfg mesh.Config
	var exit bool
	var df decodeFlags
	var pf precisionFlags
	var apiKey string
	cmd := &cobra.Command{
		Use:   "up [--groups 2] [--listen 127.0.0.1:7070] [--http-listen 127.0.0.1:8000] [PROMPT]",
		Short: "Run the whole mesh in one process: gateway, attnd and one expertd per group on loopback",
		Long: `Runs the gateway, one attnd and one expertd per expert group (each a real gRPC server on its
own loopback port), wired through an in-process registry, on the bundled model and the CPU
backend unless told otherwise. Prints the addresses and serves until SIGINT/SIGTERM.

With a PROMPT it also streams one generation through the gateway (as 'dlmesh generate' would)
with the live view; --exit then stops the mesh afterwards. SIGINT/SIGTERM during the generation
cancels it and stops the mesh.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := services.SignalContext(cmd.Context())
			defer stop()
			done, err := c.setup(ctx, "dlmesh-up")
			if err != nil {
				return err
			}
			defer done()
			cfg.ModelDir = c.dir
			cfg.Backend = c.backendFactory()
			if cfg.KVDType, cfg.ExpertActDType, err = pf.dtypes(); err != nil {
				return err
			}
			cfg.StopTimeout = time.Duration(c.stopTimeoutSec) * time.Second
			cfg.APIKey = apiKey
			cfg.Reflection = c.reflection
			// the gateway (gRPC, HTTP API) and the metrics serve the TLS as given; the services
			// inside call each other with mTLS
			if cfg.TLS, err = c.tls.mesh(); err != nil {
				return err
			}
			cfg.GatewayTLS = c.mtls
			slog.Info("starting the mesh", "model", c.dir, "groups", max(cfg.Groups, 1), "replicas", max(cfg.Replicas, 1), "backend", c.backend, "tls", cfg.TLS != nil)
			m, err := mesh.Up(ctx, cfg)
			if err != nil {
				return err
			}
			defer func() {
				slog.Info("stopping the mesh")
				if err := m.Close(); err != nil {
					slog.Error("stopping the mesh", "err", err)
				}
			}()
			a := m.Addrs()
			scheme, tlsHint := "http", ""
			if cfg.TLS != nil {
				scheme, tlsHint = "https", " --tls-ca "+c.tls.trust()
			}
			fmt.Fprintf(os.Stderr, "gateway  %s\n", a.Gateway)
			if a.HTTP != "" {
				fmt.Fprintf(os.Stderr, "openai   %s://%s/v1\n", scheme, a.HTTP)
			}
			for _, at := range a.Attnds {
				fmt.Fprintf(os.Stderr, "attnd    %s\n", at)
			}
			cs := gatewayMetrics(m.Gateway)
			for _, at := range m.Attnds {
				cs = append(cs, attndMetrics(at)...)
			}
			for i, e := range a.Expertd {
				fmt.Fprintf(os.Stderr, "expertd  %s  (experts %s)\n", e, model.FormatExperts(m.Experts[i].Experts()))
				cs = append(cs, expertdMetrics(m.Experts[i], m.Experts[i].ID())...)
			}
			stopMetrics, err := serveMetrics(c.metrics, c.mtls, cs...)
			if err != nil {
				return err
			}
			defer stopMetrics()
			if len(args) == 1 {
				release := logOut.Hold() // the live view owns the terminal until the generation ends
				err := generateTo(ctx, cmd, a.Gateway, services.ClientConfig{TLS: cfg.TLS}, apiKey, args[0], &df)
				release()
				if err != nil {
					if ctx.Err() != nil { // interrupted: the deferred Close stops the mesh
						fmt.Fprintln(os.Stderr, "\ninterrupted")
						return nil
					}
					return err
				}
				if exit {
					return nil
				}
			}
			fmt.Fprintf(os.Stderr, "serving; try: dlmesh generate --addr %s%s \"func main() {\"   (Ctrl-C stops)\n", a.Gateway, tlsHint)
			<-ctx.Done()
			return nil
		},
	}
	c.register(cmd, "up")
	f := cmd.Flags()
	f.Lookup("tls-cert").Usage = "PEM certificate: the gateway (gRPC and HTTP API) and --metrics-listen serve TLS with it, the services inside call each other with mTLS (reloaded on change)"
	f.Lookup("tls-ca").Usage = "PEM CA bundle: the services inside require client certificates it signed, the gateway verifies those its clients present, --metrics-listen requires one (default for the services inside: --tls-cert itself)"
	pf.register(cmd, true, true)
	f.IntVar(&cfg.Groups, "groups", mesh.DefaultGroups, "expert groups (one expertd each)")
	f.IntVar(&cfg.Replicas, "replicas", mesh.DefaultReplicas, "expertd replicas per group")
	f.IntVar(&cfg.Attnd, "attnd", mesh.DefaultAttnd, "attnd instances (the gateway spreads sessions over them)")
	f.StringVar(&cfg.Listen, "listen", mesh.DefaultListen, "gateway listen address")
	f.StringVar(&cfg.AttndListen, "attnd-listen", mesh.DefaultServiceListen, "attnd listen address; with a non-zero port P, attnd i listens on P+i")
	f.StringVar(&cfg.ExpertdListen, "expertd-listen", mesh.DefaultServiceListen, "expertd listen address; with a non-zero port P, replica i (group-major) listens on P+i")
	f.StringVar(&cfg.HTTPListen, "http-listen", httpapi.DefaultListen, "OpenAI-compatible HTTP API listen address (empty: none)")
	f.StringVar(&apiKey, "api-key", os.Getenv("DLMESH_API_KEY"), "require this key (Authorization: Bearer KEY) on the HTTP API and gRPC Generate (default $DLMESH_API_KEY)")
	f.IntVar(&cfg.MaxActive, "max-active", 0, "requests stepped together (default 32)")
	f.IntVar(&cfg.MaxQueue, "max-queue", 0, "requests waiting beyond max-active (default 256)")
	f.BoolVar(&cfg.WireBF16, "wire-bf16", false, "send hidden rows to the experts as bf16")
	f.BoolVar(&exit, "exit", false, "with a PROMPT: stop after generating it")
	df.register(cmd)
	return cmd
}

func gatewayCmd() *cobra.Command {
	var c common
	var cfg gateway.Config
	var attndAddrs, httpListen string
	cmd := &cobra.Command{
		Use:   "gateway (--attnd HOST:PORT[,…] | --consul ADDR) [--listen 127.0.0.1:7070] [--http-listen 127.0.0.1:8000]",
		Short: "Run the gateway: tokenise, validate, batch requests and stream Generate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := services.SignalContext(cmd.Context())
			defer stop()
			done, err := c.setup(ctx, "gateway")
			if err != nil {
				return err
			}
			defer done()
			reg, err := c.registry(ctx, services.KindAttnd, "--attnd", attndAddrs)
			if err != nil {
				return err
			}
			streams := cfg.Server.MaxConcurrentStreams
			cfg.ModelDir, cfg.Server = c.dir, c.server()
			cfg.Server.MaxConcurrentStreams = streams
			cfg.Client.TLS = c.mtls
			s, err := gateway.New(ctx, cfg, reg)
			if err != nil {
				return err
			}
			slog.Info("gateway listening; waiting for a serving attnd", "addr", s.Addr())
			go reportGatewayReady(ctx, s)
			shutdown := s.Shutdown
			if httpListen != "" {
				api, err := httpapi.New(httpapi.Config{Listen: httpListen, Model: mesh.ModelName(c.dir), APIKey: cfg.APIKey,
					StopTimeout: time.Duration(c.stopTimeoutSec) * time.Second, TLS: c.mtls}, s)
				if err != nil {
					return errors.Join(err, s.Shutdown(context.Background()))
				}
				scheme := "http"
				if c.mtls != nil {
					scheme = "https"
				}
				slog.Info("OpenAI-compatible API", "url", scheme+"://"+api.Addr()+"/v1")
				shutdown = func(ctx context.Context) error { return errors.Join(api.Shutdown(ctx), s.Shutdown(ctx)) }
			}
			return c.serve(ctx, shutdown, gatewayMetrics(s)...)
		},
	}
	c.register(cmd, "gateway")
	f := cmd.Flags()
	f.StringVar(&attndAddrs, "attnd", "", "attnd addresses, comma-separated")
	f.StringVar(&cfg.Listen, "listen", gateway.DefaultListen, "listen address")
	f.StringVar(&httpListen, "http-listen", httpapi.DefaultListen, "OpenAI-compatible HTTP API listen address (empty: none)")
	f.StringVar(&cfg.APIKey, "api-key", os.Getenv("DLMESH_API_KEY"), "require this key (Authorization: Bearer KEY) on the HTTP API and gRPC Generate (default $DLMESH_API_KEY)")
	f.StringVar(&cfg.ID, "id", "", "instance id (default: from the listen address)")
	f.IntVar(&cfg.MaxActive, "max-active", 0, "requests stepped together (default 32)")
	f.IntVar(&cfg.MaxQueue, "max-queue", 0, "requests waiting beyond max-active (default 256)")
	f.DurationVar(&cfg.QueueTimeout, "queue-timeout", gateway.DefaultQueueTimeout, "longest wait for a slot before RESOURCE_EXHAUSTED (negative: none)")
	f.IntVar(&cfg.MaxPromptBytes, "max-prompt-bytes", gateway.DefaultMaxPromptBytes, "prompt (or messages) bytes accepted, checked before tokenising")
	f.IntVar(&cfg.MaxMessages, "max-messages", gateway.DefaultMaxMessages, "chat turns accepted")
	f.Uint32Var(&cfg.Server.MaxConcurrentStreams, "max-streams", gateway.DefaultMaxStreams, "concurrent Generate calls per client connection")
	f.DurationVar(&cfg.SessionLease, "session-lease", gateway.DefaultSessionLease, "lease of the attnd sessions (renewed every third of it)")
	f.DurationVar(&cfg.StepTimeout, "step-timeout", gateway.DefaultStepTimeout, "deadline of one Step call to attnd")
	f.DurationVar(&cfg.StepStallFloor, "step-stall", gateway.DefaultStepStallFloor, "with another attnd to move to, fail a Step after max(this, 8 × p99 of recent steps) and migrate its sessions (negative: wait --step-timeout)")
	return cmd
}

func attndCmd() *cobra.Command {
	var c common
	var cfg attnd.Config
	var pf precisionFlags
	var experts string
	cmd := &cobra.Command{
		Use:   "attnd (--expertd HOST:PORT[,…] | --consul ADDR) [--listen 127.0.0.1:7080]",
		Short: "Run attnd: attention, KV cache, router and LM head; fans MoE layers out to expertd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := services.SignalContext(cmd.Context())
			defer stop()
			done, err := c.setup(ctx, "attnd")
			if err != nil {
				return err
			}
			defer done()
			reg, err := c.registry(ctx, services.KindExpertd, "--expertd", experts)
			if err != nil {
				return err
			}
			cfg.ModelDir, cfg.Server = c.dir, c.server()
			cfg.Client.TLS = c.mtls
			cfg.NewBackend = c.backendFactory()
			if cfg.KVDType, _, err = pf.dtypes(); err != nil {
				return err
			}
			cfg.DeviceMeta = deviceMeta
			if cfg.PrefillChunk == 0 {
				cfg.PrefillChunk = -1 // --prefill-chunk 0: never chunk (Config's 0 is the default)
			}
			s, err := attnd.New(ctx, cfg, reg)
			if err != nil {
				return err
			}
			slog.Info("attnd listening; NOT_SERVING until every expert is reachable", "addr", s.Addr())
			go func() {
				if s.WaitServing(ctx) == nil {
					slog.Info("attnd serving", "addr", s.Addr(), "groups", fmt.Sprint(s.Groups()))
				}
			}()
			return c.serve(ctx, s.Shutdown, attndMetrics(s)...)
		},
	}
	c.register(cmd, "attnd")
	pf.register(cmd, true, false)
	f := cmd.Flags()
	f.StringVar(&experts, "expertd", "", "expertd addresses, comma-separated")
	f.StringVar(&cfg.Listen, "listen", attnd.DefaultListen, "listen address")
	f.StringVar(&cfg.ID, "id", "", "instance id (default: from the listen address)")
	f.BoolVar(&cfg.WireBF16, "wire-bf16", false, "send hidden rows to the experts as bf16")
	f.BoolVar(&cfg.AllowMissingExperts, "allow-missing-experts", false, "serve degraded (router masks experts without a healthy replica) instead of failing steps")
	f.IntVar(&cfg.MaxSessions, "max-sessions", attnd.DefaultMaxSessions, "open sessions accepted (Open beyond: RESOURCE_EXHAUSTED)")
	f.Int64Var(&cfg.MaxKVTokens, "max-kv-tokens", attnd.DefaultMaxKVTokens, "KV cache positions the open sessions' windows may reserve together")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", attnd.DefaultDrainTimeout, "on SIGTERM, wait up to this long for the gateways to migrate the sessions (within --stop-timeout)")
	f.DurationVar(&cfg.SessionLease, "session-lease", attnd.DefaultSessionLease, "free a session no Step or Renew named for this long")
	f.IntVar(&cfg.PrefillChunk, "prefill-chunk", attnd.DefaultPrefillChunk, "cut a session step feeding more tokens than this (whole blocks) before its output rows into rounds other steps interleave with; 0 or negative: never")
	return cmd
}

func expertdCmd() *cobra.Command {
	var c common
	var cfg expertd.Config
	var pf precisionFlags
	var experts string
	cmd := &cobra.Command{
		Use:   "expertd --experts LO-HI|LIST [--listen 127.0.0.1:7101] [--consul ADDR]",
		Short: "Run expertd: the routed experts LO..HI (inclusive) of every MoE layer",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := services.SignalContext(cmd.Context())
			defer stop()
			ids, err := model.ParseExperts(experts)
			if err != nil {
				return fmt.Errorf("--experts %q: %w", experts, err)
			}
			done, err := c.setup(ctx, "expertd")
			if err != nil {
				return err
			}
			defer done()
			var reg services.Registry // static peers: attnd is told the address, nothing to register
			if c.consul != "" {
				if reg, err = c.registry(ctx, services.KindExpertd, "--consul", ""); err != nil {
					return err
				}
			}
			cfg.ModelDir, cfg.Server = c.dir, c.server()
			cfg.Experts = ids
			cfg.NewBackend = c.backendFactory()
			if _, cfg.ExpertActDType, err = pf.dtypes(); err != nil {
				return err
			}
			cfg.DeviceMeta = deviceMeta
			s, err := expertd.New(ctx, cfg, reg)
			if err != nil {
				return err
			}
			if reg != nil {
				slog.Info("registered in Consul", "consul", c.consul, "id", s.ID())
			}
			slog.Info("expertd serving", "experts", model.FormatExperts(s.Experts()), "addr", s.Addr())
			return c.serve(ctx, s.Shutdown, expertdMetrics(s, s.ID())...)
		},
	}
	c.register(cmd, "expertd")
	pf.register(cmd, false, true)
	f := cmd.Flags()
	f.StringVar(&experts, "experts", "", "experts to serve: LO-HI (inclusive) or a list, e.g. 0-7 or 0,3,5")
	f.StringVar(&cfg.Listen, "listen", expertd.DefaultListen, "listen address")
	f.StringVar(&cfg.ID, "id", "", "instance id (default: expertd-GROUP-HOST-PORT, GROUP the --group or the experts)")
	f.StringVar(&cfg.Group, "group", "", "group label (a tag in discovery)")
	return cmd
}
