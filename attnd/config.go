package attnd

import (
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/services"
)

// Defaults of Config.
const (
	DefaultListen        = "127.0.0.1:0"
	DefaultMaxSessions   = 1024
	DefaultMaxKVTokens   = 1 << 18 // KV positions reserved by all sessions' windows together
	MaxSessionIDBytes    = 256
	DefaultDrainTimeout  = 5 * time.Second
	DefaultSessionLease  = time.Minute      // a session no Step or Renew names for this long is freed
	MaxSessionLease      = 10 * time.Minute // the longest lease an Open may ask for
	DefaultMicroBatches  = 2
	DefaultExpertTimeout = 10 * time.Second // deadline of one Experts.Compute call
	DefaultInfoTimeout   = 5 * time.Second  // deadline of one Experts.Info call during discovery
	// DefaultPrefillChunk is the engine's default prefill chunk (engine.DefaultPrefillChunk), so
	// the gateway's own chunks pass whole and only longer direct steps are cut.
	DefaultPrefillChunk = 512
	MaxPrefillChunk     = 1 << 20 // the largest Config.PrefillChunk
)

// ErrBadConfig wraps every Config.Validate error.
var ErrBadConfig = errors.New("attnd: invalid config")

// Config configures one attnd.
type Config struct {
	// ModelDir is the checkpoint directory; only the attention part is loaded.
	ModelDir string
	// ID is this instance's discovery ID (default "attnd-" + the listen address).
	ID string
	// Listen is the gRPC listen address (DefaultListen).
	Listen string
	// MaxSessions bounds the open sessions; Open beyond it fails with ResourceExhausted
	// (DefaultMaxSessions).
	MaxSessions int
	// MaxKVTokens bounds the KV cache positions the open sessions reserve together (the sum of
	// their capacities: what their caches allocate); Open beyond it fails with
	// ResourceExhausted naming the limit (DefaultMaxKVTokens).
	MaxKVTokens int64
	// DrainTimeout bounds the drain of a graceful stop: after deregistering, attnd waits up to
	// this long (within the stop deadline) for the gateways to migrate its sessions elsewhere
	// before it stops serving (0: no drain; `dlmesh attnd` defaults to DefaultDrainTimeout).
	DrainTimeout time.Duration
	// SessionLease is the lease of a session opened without lease_ms: a session that no Step
	// or Renew names for that long is freed (DefaultSessionLease).
	SessionLease time.Duration
	// MicroBatches splits a step's sessions into up to this many micro-batches run
	// concurrently, so one's attention overlaps another's expert calls (DefaultMicroBatches; 1
	// turns it off).
	MicroBatches int
	// PrefillChunk bounds the tokens a session step feeds before its output rows in one round
	// of a Step (chunk.go): a longer step is cut at block boundaries into chunks of this many
	// tokens, rounded down to whole blocks of the session's block length (at least one block),
	// and the chunks run one per round, the step lock released between rounds so that other
	// Steps interleave (DefaultPrefillChunk; negative: never chunk; at most MaxPrefillChunk).
	PrefillChunk int
	// AllowMissingExperts serves degraded when some experts have no healthy replica: the router
	// leaves them out and renormalises the remaining weights, and responses say so. Without it a
	// step fails with Unavailable naming the missing experts.
	AllowMissingExperts bool
	// ExpertTimeout is the deadline of each Experts.Compute call (DefaultExpertTimeout).
	ExpertTimeout time.Duration
	// InfoTimeout is the deadline of each Experts.Info call during discovery (DefaultInfoTimeout).
	InfoTimeout time.Duration
	// WireBF16 sends hidden rows to the experts as bf16 instead of f32 (half the bytes; results
	// may differ from the in-process engine in the last bits).
	WireBF16 bool
	// Server configures the gRPC server; Client the connections to expertd; Breaker the
	// per-replica circuit breakers.
	Server  services.ServerConfig
	Client  services.ClientConfig
	Breaker services.BreakerConfig
	// NewBackend makes the kernels backend; nil means the CPU backend. Set in code.
	NewBackend func() (kernels.Backend, error)
	// KVDType is the sessions' KV cache element type: 0 or F32 (exact), or BF16 on backends
	// that have it (CUDA: half the cache memory and attention reads; see model.Model.KVDType).
	KVDType kernels.DType
	// TracerProvider traces steps and expert fan-outs; nil means the global provider. Set in code.
	TracerProvider trace.TracerProvider
	// DeviceMeta gives the discovery meta of the device the backend named backend runs on
	// (services.DeviceMeta; cmd reads NVML for it). It is asked when the instance is described for
	// registration, after the weights are loaded. nil means services.DeviceMeta(backend, nil, ""):
	// backend=cpu, or backend=cuda with the ordinal only. Set in code.
	DeviceMeta func(backend string) map[string]string
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.NewBackend == nil {
		c.NewBackend = cpu.NewBackend
	}
	if c.MicroBatches == 0 {
		c.MicroBatches = DefaultMicroBatches
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxKVTokens == 0 {
		c.MaxKVTokens = DefaultMaxKVTokens
	}
	if c.SessionLease == 0 {
		c.SessionLease = DefaultSessionLease
	}
	if c.ExpertTimeout == 0 {
		c.ExpertTimeout = DefaultExpertTimeout
	}
	if c.InfoTimeout == 0 {
		c.InfoTimeout = DefaultInfoTimeout
	}
	if c.PrefillChunk == 0 {
		c.PrefillChunk = DefaultPrefillChunk
	}
	c.Server = c.Server.WithDefaults()
	c.Client = c.Client.WithDefaults()
	c.Breaker = c.Breaker.WithDefaults()
	return c
}

// Validate checks the config (zero fields are fine: they take the defaults).
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.ModelDir == "":
		return fmt.Errorf("%w: model_dir is empty", ErrBadConfig)
	case c.MaxSessions < 1:
		return fmt.Errorf("%w: max_sessions %d: want at least 1", ErrBadConfig, c.MaxSessions)
	case c.MaxKVTokens < 1:
		return fmt.Errorf("%w: max_kv_tokens %d: want at least 1", ErrBadConfig, c.MaxKVTokens)
	case c.DrainTimeout < 0:
		return fmt.Errorf("%w: drain_timeout %v: want 0 or a positive duration", ErrBadConfig, c.DrainTimeout)
	case c.SessionLease < 0 || c.SessionLease > MaxSessionLease:
		return fmt.Errorf("%w: session_lease %v: want a duration up to %v", ErrBadConfig, c.SessionLease, MaxSessionLease)
	case c.ExpertTimeout < 0:
		return fmt.Errorf("%w: expert_timeout %v: want a positive duration", ErrBadConfig, c.ExpertTimeout)
	case c.InfoTimeout < 0:
		return fmt.Errorf("%w: info_timeout %v: want a positive duration", ErrBadConfig, c.InfoTimeout)
	case c.PrefillChunk > MaxPrefillChunk:
		return fmt.Errorf("%w: prefill_chunk %d: want at most %d tokens (negative: never chunk)", ErrBadConfig, c.PrefillChunk, MaxPrefillChunk)
	case c.KVDType != 0 && c.KVDType != kernels.F32 && c.KVDType != kernels.BF16:
		return fmt.Errorf("%w: kv_dtype %v: want F32 or BF16", ErrBadConfig, c.KVDType)
	}
	for _, err := range []error{c.Server.Validate(), c.Client.Validate(), c.Breaker.Validate()} {
		if err != nil {
			return fmt.Errorf("attnd: %w", err)
		}
	}
	return nil
}

// chunkTokens is the PrefillChunk bound in whole blocks of blockLen (0: never chunk).
func (c Config) chunkTokens(blockLen int) int {
	if c.PrefillChunk < 0 || blockLen <= 0 {
		return 0
	}
	return max(c.PrefillChunk/blockLen, 1) * blockLen
}
