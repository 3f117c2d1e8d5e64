package httpapi

import (
	"errors"
	"fmt"
	"github.com/dlmesh/dlmesh/services"
	"time"
)

// Defaults of Config.
const (
	DefaultListen       = "127.0.0.1:8000"
	DefaultMaxBodyBytes = 4 << 20 // 4 MiB: far above any prompt the context holds
	DefaultMaxTokens    = 64      // gen_length when a request gives neither max_tokens nor max_completion_tokens
	DefaultStopTimeout  = 10 * time.Second
)

// ErrBadConfig wraps every Config.Validate error.
var ErrBadConfig = errors.New("httpapi: invalid config")

// Config configures the HTTP API.
type Config struct {
	// Listen is the address to serve on (DefaultListen in the commands; required here).
	Listen string
	// Model is the model id /v1/models lists and requests may name (an empty "model" is
	// accepted too).
	Model string
	// APIKey, when set, is required as "Authorization: Bearer KEY" on every request.
	APIKey string
	// MaxBodyBytes bounds a request body (DefaultMaxBodyBytes); larger bodies get 413.
	MaxBodyBytes int64
	// MaxTokens is the gen_length of requests without max_tokens (DefaultMaxTokens).
	MaxTokens int
	// StopTimeout bounds Shutdown's wait for running requests (DefaultStopTimeout).
	StopTimeout time.Duration
	// TLS, when set, serves HTTPS (HTTP/2 and HTTP/1.1) with its certificate, reloaded on
	// change; nil serves plain HTTP.
	TLS *services.TLS
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = DefaultMaxTokens
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	return c
}

// Validate checks c.
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.Listen == "":
		return fmt.Errorf("%w: listen is empty", ErrBadConfig)
	case c.Model == "":
		return fmt.Errorf("%w: model is empty", ErrBadConfig)
	case c.MaxBodyBytes < 1024:
		return fmt.Errorf("%w: max_body_bytes %d: want at least 1024", ErrBadConfig, c.MaxBodyBytes)
	case c.MaxTokens < 1:
		return fmt.Errorf("%w: max_tokens %d: want at least 1", ErrBadConfig, c.MaxTokens)
	case c.StopTimeout < 0:
		return fmt.Errorf("%w: stop_timeout %v: want a positive duration", ErrBadConfig, c.StopTimeout)
	}
	return nil
}
