package expertd

import (
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/model"
	"github.com/dlmesh/dlmesh/services"
)

// Defaults of Config.
const (
	DefaultListen  = "127.0.0.1:0"
	DefaultMaxRows = 65536 // rows one Compute may carry
)

// ErrBadConfig wraps every Config.Validate error.
var ErrBadConfig = errors.New("expertd: invalid config")

// Config configures one expertd replica.
type Config struct {
	// ModelDir is the checkpoint directory (config.json and the safetensors shards).
	ModelDir string
	// Experts are the routed expert ids this replica holds in every MoE layer (model.ParseExperts
	// reads "LO-HI" with HI inclusive, or a comma-separated list of ids and ranges).
	Experts []int
	// Group names the expert group this replica serves (registered as metadata; attnd groups
	// replicas by the expert set they report, so the name is informational).
	Group string
	// ID is the instance id the replica registers under; empty: "expertd-GROUP-HOST-PORT"
	// (Server.ID).
	ID string
	// Listen is the gRPC listen address (DefaultListen).
	Listen string
	// MaxRows bounds the rows of one Compute request (DefaultMaxRows).
	MaxRows int
	// Server configures the gRPC server (message sizes, keepalive, StopTimeout bounds the
	// graceful stop of Close).
	Server services.ServerConfig
	// NewBackend makes the kernels backend the experts live on; nil means the CPU backend.
	NewBackend func() (kernels.Backend, error)
	// ExpertActDType is the experts' activation precision: 0 or F32 (exact), or BF16 (CUDA:
	// half the tensor-core work; see model.LoadOptions.ExpertActDType).
	ExpertActDType kernels.DType
	// TracerProvider traces Compute (and the gRPC server); nil means the global provider.
	TracerProvider trace.TracerProvider
	// DeviceMeta gives the discovery meta of the device the backend named backend runs on
	// (services.DeviceMeta; cmd reads NVML for it). It is asked when the instance is described for
	// registration, after the weights are loaded. nil means services.DeviceMeta(backend, nil, ""):
	// backend=cpu, or backend=cuda with the ordinal only. Set in code.
	DeviceMeta func(backend string) map[string]string
}

// RequestBytes is the size of the largest Compute request a replica of a model with config mc
// needs to accept when a request carries up to rows rows: f32 hidden rows, top_k ids and weights,
// and 1 MiB for the framing. New bounds the server's messages by it unless Server.MaxRecvMsgBytes
// is set, so a request is refused by size before it is read into memory.
func RequestBytes(mc *model.Config, rows int) int {
	return rows*(mc.Hidden*4+mc.TopK*8) + 1<<20
}

// WithDefaults returns cfg with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.NewBackend == nil {
		c.NewBackend = cpu.NewBackend
	}
	if c.MaxRows <= 0 {
		c.MaxRows = DefaultMaxRows
	}
	c.Server = c.Server.WithDefaults()
	return c
}

// Validate checks the config (zero fields are fine: they take the defaults); the expert ids are checked against the
// model's expert count when the checkpoint is loaded.
func (c Config) Validate() error {
	if c.ModelDir == "" {
		return fmt.Errorf("%w: model_dir is empty", ErrBadConfig)
	}
	if len(c.Experts) == 0 {
		return fmt.Errorf("%w: experts is empty (want \"LO-HI\" or a list of ids)", ErrBadConfig)
	}
	seen := map[int]bool{}
	for _, e := range c.Experts {
		if e < 0 {
			return fmt.Errorf("%w: expert %d is negative", ErrBadConfig, e)
		}
		if seen[e] {
			return fmt.Errorf("%w: expert %d listed twice", ErrBadConfig, e)
		}
		seen[e] = true
	}
	if c.MaxRows < 0 {
		return fmt.Errorf("%w: max_rows %d is negative", ErrBadConfig, c.MaxRows)
	}
	if a := c.ExpertActDType; a != 0 && a != kernels.F32 && a != kernels.BF16 {
		return fmt.Errorf("%w: expert_act_dtype %v: want F32 or BF16", ErrBadConfig, a)
	}
	if err := c.Server.WithDefaults().Validate(); err != nil {
		return fmt.Errorf("expertd: %w", err)
	}
	return nil
}
