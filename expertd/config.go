package expertd

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/kernels"
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
	// Experts are the routed expert ids this replica holds in every MoE layer (ParseExperts
	// reads "LO-HI" with HI inclusive, or a comma-separated list of ids and ranges).
	Experts []int
	// Group names the expert group this replica serves (registered as metadata; attnd groups
	// replicas by the expert set they report, so the name is informational).
	Group string
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

// ParseExperts reads an expert set: "LO-HI" (both inclusive: "0-7"), a list "0,3,5", or a mix
// "0-3,8-11". The result is sorted and free of duplicates.
func ParseExperts(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("%w: experts is empty", ErrBadConfig)
	}
	seen := map[int]bool{}
	var ids []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(strings.TrimSpace(lo))
		if err != nil || a < 0 {
			return nil, fmt.Errorf("%w: experts %q: %q is not an id or LO-HI range", ErrBadConfig, s, part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil || b < a {
				return nil, fmt.Errorf("%w: experts %q: %q is not a range LO-HI with LO <= HI", ErrBadConfig, s, part)
			}
		}
		for e := a; e <= b; e++ {
			if seen[e] {
				return nil, fmt.Errorf("%w: experts %q: expert %d listed twice", ErrBadConfig, s, e)
			}
			seen[e] = true
			ids = append(ids, e)
		}
	}
	sort.Ints(ids)
	return ids, nil
}

// FormatExperts writes ids (sorted) in the compact form ParseExperts reads: "0-7", "0-3,8,10-11".
func FormatExperts(ids []int) string {
	s := append([]int(nil), ids...)
	sort.Ints(s)
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", s[i], s[j])
		} else {
			fmt.Fprintf(&b, "%d", s[i])
		}
		i = j + 1
	}
	return b.String()
}

// SplitExperts divides experts 0..n-1 into groups contiguous ranges as evenly as possible
// (16 experts, 2 groups: 0-7 and 8-15).
func SplitExperts(n, groups int) ([][]int, error) {
	if groups <= 0 || groups > n {
		return nil, fmt.Errorf("%w: groups %d not in [1, %d]", ErrBadConfig, groups, n)
	}
	out := make([][]int, groups)
	for g := range out {
		lo, hi := g*n/groups, (g+1)*n/groups
		for e := lo; e < hi; e++ {
			out[g] = append(out[g], e)
		}
	}
	return out, nil
}
