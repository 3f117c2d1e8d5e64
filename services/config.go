package services

import (
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Defaults of ServerConfig, ClientConfig and BreakerConfig.
const (
	// DefaultMaxMsgBytes bounds one gRPC message either way: tensors (hidden rows of a whole
	// batch, bf16 or f32) are big.
	DefaultMaxMsgBytes = 256 << 20

	// DefaultServerKeepaliveTime is how long a server waits on an idle connection before pinging
	// the client, and DefaultServerKeepaliveTimeout how long it then waits for the ack.
	DefaultServerKeepaliveTime    = 30 * time.Second
	DefaultServerKeepaliveTimeout = 10 * time.Second
	// DefaultMinPingInterval is the shortest client ping interval a server tolerates before it
	// closes the connection with ENHANCE_YOUR_CALM; it is below DefaultClientKeepaliveTime.
	DefaultMinPingInterval = 10 * time.Second
	// DefaultStopTimeout bounds GracefulStop before in-flight calls are cut.
	DefaultStopTimeout = 10 * time.Second

	// DefaultClientKeepaliveTime is the client ping interval on an idle connection and
	// DefaultClientKeepaliveTimeout the wait for the ack before the connection is dropped: a dead
	// expertd is noticed within about 30 s even when no call is in flight.
	DefaultClientKeepaliveTime    = 20 * time.Second
	DefaultClientKeepaliveTimeout = 10 * time.Second
	// DefaultCallTimeout is the deadline given to a unary call whose context has none.
	DefaultCallTimeout = 30 * time.Second
	// DefaultReconnectBackoff is the longest wait between two dials of a peer whose connection
	// failed (gRPC's own default grows to 2 minutes: a peer restarted after a long outage would
	// wait that long for its callers).
	DefaultReconnectBackoff = time.Second

	// DefaultBreakerFailures consecutive failures open a breaker.
	DefaultBreakerFailures = 5
	// DefaultBreakerOpenTimeout is how long an open breaker rejects calls before it lets
	// DefaultBreakerHalfOpenCalls probe calls through.
	DefaultBreakerOpenTimeout   = 5 * time.Second
	DefaultBreakerHalfOpenCalls = 1
)

// ErrBadConfig wraps every Validate error of this package.
var ErrBadConfig = errors.New("services: invalid config")

// ServerConfig configures a gRPC server built by NewServer. Zero fields take the defaults.
type ServerConfig struct {
	// MaxRecvMsgBytes and MaxSendMsgBytes bound one message (DefaultMaxMsgBytes).
	MaxRecvMsgBytes int
	MaxSendMsgBytes int
	// MaxConcurrentStreams bounds the concurrent calls of one client connection (0: grpc's default,
	// unbounded).
	MaxConcurrentStreams uint32
	// KeepaliveTime and KeepaliveTimeout: ping an idle client after KeepaliveTime, drop the
	// connection when the ack takes longer than KeepaliveTimeout (DefaultServerKeepalive…).
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// MinPingInterval is the enforcement policy: clients pinging more often are disconnected
	// (DefaultMinPingInterval). Pings on connections without calls are always permitted, so that
	// clients can keep idle connections to replicas warm.
	MinPingInterval time.Duration
	// StopTimeout bounds the graceful stop in Node.Stop (DefaultStopTimeout).
	StopTimeout time.Duration
	// IdleTrim is how long the process's mesh traffic must be quiet after any activity before
	// freed memory is returned to the OS (memtrim.go; DefaultIdleTrim; negative: never).
	IdleTrim time.Duration
	// Reflection registers the gRPC reflection service (for grpcurl); off by default.
	Reflection bool
	// Codes is the service's error → status table (the shared entries follow it).
	Codes CodeTable
	// TLS serves TLS with its certificate (reloaded on change) and, when it requires client
	// certificates, refuses every call but health without a verified one (Unauthenticated);
	// nil serves plaintext unless Creds is set.
	TLS *TLS
	// Creds are other transport credentials; TLS wins when both are set.
	Creds credentials.TransportCredentials
	// TracerProvider traces the server's calls; nil means the global provider. It is set in code
	// (several services in one process each have their own), never from flags.
	TracerProvider trace.TracerProvider
	// StreamInterceptors run after the error-mapping interceptor on every streaming call (the
	// gateway's API key check, APIKeyStreamInterceptor). Set in code.
	StreamInterceptors []grpc.StreamServerInterceptor
}

// WithDefaults returns c with every zero field set to its default.
func (c ServerConfig) WithDefaults() ServerConfig {
	if c.MaxRecvMsgBytes == 0 {
		c.MaxRecvMsgBytes = DefaultMaxMsgBytes
	}
	if c.MaxSendMsgBytes == 0 {
		c.MaxSendMsgBytes = DefaultMaxMsgBytes
	}
	if c.KeepaliveTime == 0 {
		c.KeepaliveTime = DefaultServerKeepaliveTime
	}
	if c.KeepaliveTimeout == 0 {
		c.KeepaliveTimeout = DefaultServerKeepaliveTimeout
	}
	if c.MinPingInterval == 0 {
		c.MinPingInterval = DefaultMinPingInterval
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.IdleTrim == 0 {
		c.IdleTrim = DefaultIdleTrim
	}
	return c
}

// Validate checks c after WithDefaults.
func (c ServerConfig) Validate() error {
	if err := positive("server max_recv_msg_bytes", int64(c.MaxRecvMsgBytes)); err != nil {
		return err
	}
	if err := positive("server max_send_msg_bytes", int64(c.MaxSendMsgBytes)); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"server keepalive_time", c.KeepaliveTime},
		{"server keepalive_timeout", c.KeepaliveTimeout},
		{"server min_ping_interval", c.MinPingInterval},
		{"server stop_timeout", c.StopTimeout},
	} {
		if err := positiveDuration(d.name, d.v); err != nil {
			return err
		}
	}
	return nil
}

// ClientConfig configures a client connection built by Dial. Zero fields take the defaults.
type ClientConfig struct {
	// MaxRecvMsgBytes and MaxSendMsgBytes bound one message (DefaultMaxMsgBytes).
	MaxRecvMsgBytes int
	MaxSendMsgBytes int
	// KeepaliveTime and KeepaliveTimeout: ping after KeepaliveTime without activity, also with no
	// call in flight, and drop the connection when the ack takes longer than KeepaliveTimeout
	// (DefaultClientKeepalive…). KeepaliveTime must not be below the server's MinPingInterval.
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// CallTimeout is the deadline of a unary call whose context has none (DefaultCallTimeout);
	// negative means no default deadline. Streaming calls never get one.
	CallTimeout time.Duration
	// TLS verifies the server against its CA and presents its certificate when it has one; nil
	// dials plaintext.
	TLS *TLS
	// ReconnectBackoff bounds the wait between two dials of a server whose connection failed
	// (DefaultReconnectBackoff).
	ReconnectBackoff time.Duration
	// TracerProvider traces the client's calls; nil means the global provider. Set in code.
	TracerProvider trace.TracerProvider
}

// WithDefaults returns c with every zero field set to its default.
func (c ClientConfig) WithDefaults() ClientConfig {
	if c.ReconnectBackoff == 0 {
		c.ReconnectBackoff = DefaultReconnectBackoff
	}
	if c.MaxRecvMsgBytes == 0 {
		c.MaxRecvMsgBytes = DefaultMaxMsgBytes
	}
	if c.MaxSendMsgBytes == 0 {
		c.MaxSendMsgBytes = DefaultMaxMsgBytes
	}
	if c.KeepaliveTime == 0 {
		c.KeepaliveTime = DefaultClientKeepaliveTime
	}
	if c.KeepaliveTimeout == 0 {
		c.KeepaliveTimeout = DefaultClientKeepaliveTimeout
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = DefaultCallTimeout
	}
	return c
}

// Validate checks c after WithDefaults.
func (c ClientConfig) Validate() error {
	if err := positive("client max_recv_msg_bytes", int64(c.MaxRecvMsgBytes)); err != nil {
		return err
	}
	if err := positive("client max_send_msg_bytes", int64(c.MaxSendMsgBytes)); err != nil {
		return err
	}
	if err := positiveDuration("client keepalive_timeout", c.KeepaliveTimeout); err != nil {
		return err
	}
	if err := positiveDuration("client reconnect_backoff", c.ReconnectBackoff); err != nil {
		return err
	}
	// grpc raises a client keepalive time below 10 s to 10 s; say so instead of surprising.
	if c.KeepaliveTime < 10*time.Second {
		return fmt.Errorf("%w: client keepalive_time %v is below grpc's minimum of 10s", ErrBadConfig, c.KeepaliveTime)
	}
	return nil
}

// BreakerConfig configures the per-instance circuit breakers. Zero fields take the defaults.
type BreakerConfig struct {
	// Failures is the number of consecutive failed calls that opens the breaker
	// (DefaultBreakerFailures).
	Failures uint32
	// OpenTimeout is how long an open breaker rejects calls before it turns half-open
	// (DefaultBreakerOpenTimeout).
	OpenTimeout time.Duration
	// HalfOpenCalls is the number of probe calls let through when half-open; that many
	// successes in a row close it again, one failure opens it (DefaultBreakerHalfOpenCalls).
	HalfOpenCalls uint32
	// Interval clears the failure counts of a closed breaker periodically (0: never; only a
	// success resets the consecutive count).
	Interval time.Duration
}

// WithDefaults returns c with every zero field set to its default.
func (c BreakerConfig) WithDefaults() BreakerConfig {
	if c.Failures == 0 {
		c.Failures = DefaultBreakerFailures
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = DefaultBreakerOpenTimeout
	}
	if c.HalfOpenCalls == 0 {
		c.HalfOpenCalls = DefaultBreakerHalfOpenCalls
	}
	return c
}

// Validate checks c after WithDefaults.
func (c BreakerConfig) Validate() error {
	if c.Failures == 0 {
		return fmt.Errorf("%w: breaker failures must be at least 1", ErrBadConfig)
	}
	if c.HalfOpenCalls == 0 {
		return fmt.Errorf("%w: breaker half_open_calls must be at least 1", ErrBadConfig)
	}
	if err := positiveDuration("breaker open_timeout", c.OpenTimeout); err != nil {
		return err
	}
	if c.Interval < 0 {
		return fmt.Errorf("%w: breaker interval %v is negative", ErrBadConfig, c.Interval)
	}
	return nil
}

func positive(name string, v int64) error {
	if v <= 0 {
		return fmt.Errorf("%w: %s must be positive, got %d", ErrBadConfig, name, v)
	}
	return nil
}

func positiveDuration(name string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%w: %s must be positive, got %v", ErrBadConfig, name, d)
	}
	return nil
}
