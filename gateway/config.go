package gateway

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/services"
)

// Defaults of Config.
const (
	DefaultListen       = "127.0.0.1:7070"
	DefaultMaxActive    = engine.DefaultMaxActive
	DefaultMaxQueue     = engine.DefaultMaxQueue
	DefaultStepTimeout  = 60 * time.Second // deadline of one Attention.Step call
	DefaultCallTimeout  = 10 * time.Second // deadline of Attention.Open and Close
	DefaultQueueTimeout = 30 * time.Second // longest wait in the queue for a slot
	DefaultSessionLease = time.Minute      // lease of the attnd sessions, renewed every third of it
	// A Step to an attnd another could take over from fails after max(floor, multiplier × p99).
	DefaultStepStallFloor      = 2 * time.Second
	DefaultStepStallMultiplier = 8.0
)

// ErrBadConfig wraps every Config.Validate error.
var ErrBadConfig = errors.New("gateway: invalid config")

// Config configures the gateway.
type Config struct {
	// ModelDir holds the tokenizer files (tokenizer.json, tokenizer_config.json) and config.json;
	// no weights are read.
	ModelDir string
	// ModelName labels the gateway's metrics (model_name); default the base name of ModelDir.
	ModelName string
	// ID is this instance's discovery ID (default "gateway-" + the listen address).
	ID string
	// Listen is the gRPC listen address (DefaultListen).
	Listen string
	// MaxActive requests are stepped together; MaxQueue more may wait, beyond that Generate
	// fails with ResourceExhausted (DefaultMaxActive, DefaultMaxQueue).
	MaxActive int
	MaxQueue  int
	// MaxPromptBytes bounds the prompt (or the messages' text together) before tokenising,
	// MaxMessages the chat turns, MaxRequestIDBytes the request_id (Default…): a request over a
	// bound is refused with InvalidArgument naming it. The window (prompt tokens + gen_length)
	// is bounded by the model's max_position_embeddings.
	MaxPromptBytes    int
	MaxMessages       int
	MaxRequestIDBytes int
	// QueueTimeout bounds the time a request may wait in the queue for a slot among the
	// MaxActive; past it the request fails with ResourceExhausted (DefaultQueueTimeout;
	// negative: no bound).
	QueueTimeout time.Duration
	// SessionLease is the lease of the gateway's attnd sessions: attnd frees a session no Step
	// or Renew named for that long, so a gateway that dies leaks nothing; the gateway renews
	// its sessions every third of it (DefaultSessionLease).
	SessionLease time.Duration
	// ModelBlockLen is the block length the model was trained with: others are allowed with a
	// warning (default diffusion.DefaultBlockLen).
	ModelBlockLen int
	// StepTimeout is the deadline of one Attention.Step call, CallTimeout of Open and Close.
	StepTimeout time.Duration
	CallTimeout time.Duration
	// StepStallFloor and StepStallMultiplier bound a Step to an attnd while another attnd could
	// take its sessions over: past max(StepStallFloor, StepStallMultiplier × the p99 of the
	// recent Steps' time per row × its rows), within StepTimeout, the call fails and the engine migrates its sessions
	// (re-prefill elsewhere), so a hung attnd costs seconds, not StepTimeout
	// (DefaultStepStall…; a negative floor: StepTimeout always).
	StepStallFloor      time.Duration
	StepStallMultiplier float64
	// Server configures the gRPC server; Client the connections to attnd; Breaker the per-attnd
	// circuit breakers.
	Server  services.ServerConfig
	Client  services.ClientConfig
	Breaker services.BreakerConfig
	// APIKey, when set, is required on Generate as gRPC metadata "authorization: Bearer KEY"
	// (health checks stay open).
	APIKey string
	// TracerProvider traces requests, blocks and steps; nil means the global provider. Set in code.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.ModelName == "" && c.ModelDir != "" {
		c.ModelName = filepath.Base(filepath.Clean(c.ModelDir))
	}
	if c.MaxActive == 0 {
		c.MaxActive = DefaultMaxActive
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = DefaultMaxQueue
	}
	if c.MaxPromptBytes == 0 {
		c.MaxPromptBytes = DefaultMaxPromptBytes
	}
	if c.MaxMessages == 0 {
		c.MaxMessages = DefaultMaxMessages
	}
	if c.MaxRequestIDBytes == 0 {
		c.MaxRequestIDBytes = DefaultMaxRequestIDBytes
	}
	if c.SessionLease == 0 {
		c.SessionLease = DefaultSessionLease
	}
	if c.QueueTimeout == 0 {
		c.QueueTimeout = DefaultQueueTimeout
	}
	if c.Server.MaxConcurrentStreams == 0 {
		c.Server.MaxConcurrentStreams = DefaultMaxStreams
	}
	if c.Server.MaxRecvMsgBytes == 0 { // a Generate request is text: the prompt bound and some
		c.Server.MaxRecvMsgBytes = c.MaxPromptBytes + 1<<20
	}
	if c.ModelBlockLen == 0 {
		c.ModelBlockLen = diffusion.DefaultBlockLen
	}
	if c.StepTimeout == 0 {
		c.StepTimeout = DefaultStepTimeout
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	if c.StepStallFloor == 0 {
		c.StepStallFloor = DefaultStepStallFloor
	}
	if c.StepStallMultiplier == 0 {
		c.StepStallMultiplier = DefaultStepStallMultiplier
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
	case c.MaxActive < 1:
		return fmt.Errorf("%w: max_active %d: want at least 1", ErrBadConfig, c.MaxActive)
	case c.MaxQueue < 0:
		return fmt.Errorf("%w: max_queue %d: want 0 or more", ErrBadConfig, c.MaxQueue)
	case c.MaxPromptBytes < 1 || c.MaxMessages < 1 || c.MaxRequestIDBytes < 1:
		return fmt.Errorf("%w: max_prompt_bytes %d, max_messages %d, max_request_id_bytes %d: want at least 1",
			ErrBadConfig, c.MaxPromptBytes, c.MaxMessages, c.MaxRequestIDBytes)
	case c.ModelBlockLen < 1:
		return fmt.Errorf("%w: model_block_length %d: want at least 1", ErrBadConfig, c.ModelBlockLen)
	case c.SessionLease < 0:
		return fmt.Errorf("%w: session_lease %v: want a positive duration", ErrBadConfig, c.SessionLease)
	case c.StepTimeout < 0 || c.CallTimeout < 0:
		return fmt.Errorf("%w: step_timeout %v and call_timeout %v: want positive durations", ErrBadConfig, c.StepTimeout, c.CallTimeout)
	case c.StepStallMultiplier < 1:
		return fmt.Errorf("%w: step_stall_multiplier %g: want at least 1", ErrBadConfig, c.StepStallMultiplier)
	}
	for _, err := range []error{c.Server.Validate(), c.Client.Validate(), c.Breaker.Validate()} {
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}
