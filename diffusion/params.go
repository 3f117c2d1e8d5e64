package diffusion

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dlmesh/dlmesh/errdefs"
)

// Limits of Params fields.
const (
	// DefaultBlockLen is the block length LLaDA2.x models were trained with: the one source of
	// it (attnd's default session block length, the engine's and gateway's warning threshold).
	DefaultBlockLen = 32
	DefaultGenLen   = 64
	MaxBlockLen     = 4096
	MaxGenLen       = 1 << 16
	MaxPostSteps    = 1024
	MaxTemperature  = 10
	MaxTopK         = 1000 // the LM head returns at most 1024 candidates per position
	MaxStopStrings  = 16
	MaxStopBytes    = 256
)

// ParamError reports one invalid decoding parameter. Field is the snake_case wire name
// (tau_mask, tau_edit, max_post_steps, block_length, gen_length, temperature, top_k, top_p,
// stop_strings, mode), Value the offending value as text and Msg the allowed range.
type ParamError struct {
	Field string
	Value string
	Msg   string
}

func (e *ParamError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("diffusion: invalid %s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("diffusion: invalid %s %s: %s", e.Field, e.Value, e.Msg)
}

// Unwrap makes errors.Is(err, errdefs.ErrInvalidArgument) hold.
func (e *ParamError) Unwrap() error { return errdefs.ErrInvalidArgument }

// Params are the decoding parameters of one request. Build them with Preset and override
// fields; the zero value is not valid (TopP 0, TauMask 0).
type Params struct {
	TauMask      float64  // M2T threshold: a masked position is unmasked when prob > TauMask; (0, 1]
	TauEdit      float64  // T2T threshold: a decoded position is rewritten when prob > TauEdit; [0, 1]; ignored when EditOff
	EditOff      bool     // no T2T editing (LLaDA2.0)
	MaxPostSteps int      // editing steps after a block has no masks left (16; 0 for v20); 0..1024
	BlockLen     int      // tokens per block (the model's training block length, 32); 1..4096
	GenLen       int      // tokens to generate, before rounding the window up to whole blocks; 1..MaxGenLen
	Temperature  float64  // 0 = greedy; 0..10
	TopK         int      // keep the K most probable candidates; 0 = off; 0..MaxTopK
	TopP         float64  // keep the smallest prefix of candidates whose probability reaches TopP; 1 = off; (0, 1]
	Seed         uint64   // sampler seed (Temperature > 0)
	StopStrings  []string // checked by the driver on decoded text (see State.Stop); up to 16, each 1..256 bytes
}

// Presets lists the names Preset accepts.
var Presets = []string{"q", "s", "v20"}

// Preset returns the parameters of a named mode: "q" (LLaDA2.1 quality: τ_mask 0.7, τ_edit 0.5,
// 16 post-edit steps), "s" (LLaDA2.1 speedy: 0.5, 0.0, 16) or "v20" (LLaDA2.0: 0.95, no
// editing, no post steps); all greedy with BlockLen 32 and GenLen 64.
func Preset(name string) (Params, error) {
	p := Params{BlockLen: DefaultBlockLen, GenLen: DefaultGenLen, TopP: 1}
	switch name {
	case "q":
		p.TauMask, p.TauEdit, p.MaxPostSteps = 0.7, 0.5, 16
	case "s":
		p.TauMask, p.TauEdit, p.MaxPostSteps = 0.5, 0.0, 16
	case "v20":
		p.TauMask, p.EditOff, p.MaxPostSteps = 0.95, true, 0
	default:
		return Params{}, &ParamError{Field: "mode", Value: strconv.Quote(name),
			Msg: "want one of " + strings.Join(Presets, ", ")}
	}
	return p, nil
}

// Validate checks every field against its range. The error is a *ParamError naming the first
// invalid field by its wire name; it wraps errdefs.ErrInvalidArgument.
func (p Params) Validate() error {
	bad := func(field, value, msg string) error {
		return &ParamError{Field: field, Value: value, Msg: msg}
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	d := strconv.Itoa
	switch {
	case !(p.TauMask > 0 && p.TauMask <= 1):
		return bad("tau_mask", f(p.TauMask), "want a value in (0, 1]")
	case !p.EditOff && !(p.TauEdit >= 0 && p.TauEdit <= 1):
		return bad("tau_edit", f(p.TauEdit), "want a value in [0, 1]")
	case p.MaxPostSteps < 0 || p.MaxPostSteps > MaxPostSteps:
		return bad("max_post_steps", d(p.MaxPostSteps), fmt.Sprintf("want a value in [0, %d]", MaxPostSteps))
	case p.BlockLen < 1 || p.BlockLen > MaxBlockLen:
		return bad("block_length", d(p.BlockLen), fmt.Sprintf("want a value in [1, %d]", MaxBlockLen))
	case p.GenLen < 1 || p.GenLen > MaxGenLen:
		return bad("gen_length", d(p.GenLen), fmt.Sprintf("want a value in [1, %d]", MaxGenLen))
	case !(p.Temperature >= 0 && p.Temperature <= MaxTemperature):
		return bad("temperature", f(p.Temperature), fmt.Sprintf("want a value in [0, %d]", MaxTemperature))
	case p.TopK < 0 || p.TopK > MaxTopK:
		return bad("top_k", d(p.TopK), fmt.Sprintf("want 0 (off) or a count up to %d", MaxTopK))
	case !(p.TopP > 0 && p.TopP <= 1):
		return bad("top_p", f(p.TopP), "want a value in (0, 1]")
	case len(p.StopStrings) > MaxStopStrings:
		return bad("stop_strings", d(len(p.StopStrings))+" strings", fmt.Sprintf("want at most %d", MaxStopStrings))
	}
	for i, s := range p.StopStrings {
		if len(s) < 1 || len(s) > MaxStopBytes {
			return bad("stop_strings", fmt.Sprintf("[%d] (%d bytes)", i, len(s)),
				fmt.Sprintf("want 1 to %d bytes each", MaxStopBytes))
		}
	}
	return nil
}

// BlockWarning returns a non-empty warning when BlockLen differs from the block length the model
// was trained with (modelBlockLen; 0 or less means unknown, no warning).
func (p Params) BlockWarning(modelBlockLen int) string {
	if modelBlockLen <= 0 || p.BlockLen == modelBlockLen {
		return ""
	}
	return fmt.Sprintf("block_length %d differs from the model's training block length %d; output quality may degrade",
		p.BlockLen, modelBlockLen)
}
