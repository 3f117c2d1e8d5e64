package gateway

import (
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/services"
)

// Defaults of Config.
const (
	DefaultListen      = "127.0.0.1:7070"
	DefaultMaxActive   = engine.DefaultMaxActive
	DefaultMaxQueue    = engine.DefaultMaxQueue
	DefaultStepTimeout = 60 * time.Second // deadline of one Attention.Step call
	DefaultCallTimeout = 10 * time.Second // deadline of Attention.Open and Close
)

// ErrBadConfig wraps every Config.Validate error.
var ErrBadConfig = errors.New("gateway: invalid config")

// Config configures the gateway.
type Config struct {
	// ModelDir holds the tokenizer files (tokenizer.json, tokenizer_config.json) and config.json;
	// no weights are read.
	ModelDir string
	// ID is this instance's discovery ID (default "gateway-" + the listen address).
	ID string
	// Listen is the gRPC listen address (DefaultListen).
	Listen string
	// MaxActive requests are stepped together; MaxQueue more may wait, beyond that Generate
	// fails with ResourceExhausted (DefaultMaxActive, DefaultMaxQueue).
	MaxActive int
	MaxQueue  int
	// ModelBlockLen is the block length the model was trained with: others are allowed with a
	// warning (default diffusion.DefaultBlockLen).
	ModelBlockLen int
	// StepTimeout is the deadline of one Attention.Step call, CallTimeout of Open and Close.
	StepTimeout time.Duration
	CallTimeout time.Duration
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
	if c.MaxActive == 0 {
		c.MaxActive = DefaultMaxActive
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = DefaultMaxQueue
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
	case c.ModelBlockLen < 1:
		return fmt.Errorf("%w: model_block_length %d: want at least 1", ErrBadConfig, c.ModelBlockLen)
	case c.StepTimeout < 0 || c.CallTimeout < 0:
		return fmt.Errorf("%w: step_timeout %v and call_timeout %v: want positive durations", ErrBadConfig, c.StepTimeout, c.CallTimeout)
	}
	for _, err := range []error{c.Server.Validate(), c.Client.Validate(), c.Breaker.Validate()} {
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}
