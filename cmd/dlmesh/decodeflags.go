package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/diffusion"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// decodeFlags are the decoding flags shared by `run` and `generate`.
type decodeFlags struct {
	messages    []*pb.ChatMessage // generate --chat: sent instead of a prompt
	mode        string
	gen, block  int
	tauMask     float64
	tauEdit     float64
	editOff     bool
	maxPost     int
	temperature float64
	topK        int
	topP        float64
	seed        uint64
	stop        []string
	json        bool
	keepSpecial bool
}

func (f *decodeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.mode, "mode", "q", "preset: q (LLaDA2.1 quality 0.7/0.5), s (speedy 0.5/0.0), v20 (LLaDA2.0 0.95, no editing)")
	fl.IntVar(&f.gen, "gen", 64, "tokens to generate (at most this many are returned; the window is decoded in whole blocks)")
	fl.IntVar(&f.block, "block", 0, "block length (default: the model's, 32)")
	fl.Float64Var(&f.tauMask, "tau-mask", 0, "Mask-to-Token threshold (overrides the preset)")
	fl.Float64Var(&f.tauEdit, "tau-edit", 0, "Token-to-Token edit threshold (overrides the preset)")
	fl.BoolVar(&f.editOff, "no-edit", false, "turn Token-to-Token editing off")
	fl.IntVar(&f.maxPost, "max-post-steps", -1, "editing steps after a block has no masks (overrides the preset)")
	fl.Float64Var(&f.temperature, "temperature", 0, "sampling temperature (0 = greedy)")
	fl.IntVar(&f.topK, "top-k", 0, "sample among the k most likely tokens (0 = off)")
	fl.Float64Var(&f.topP, "top-p", 1, "nucleus sampling mass (1 = off)")
	fl.Uint64Var(&f.seed, "seed", 0, "sampling seed (the same seed gives the same output)")
	fl.StringArrayVar(&f.stop, "stop", nil, "stop string (repeatable)")
	fl.BoolVar(&f.json, "json", false, `print one JSON object: {"ids", "text", "forwards", "steps", "finish_reason"}`)
	fl.BoolVar(&f.keepSpecial, "keep-special", false, "keep special tokens (<|role_end|>, …) in the output text")
}

// params builds the decoding parameters: the preset, then every flag the user set.
func (f *decodeFlags) params(cmd *cobra.Command) (diffusion.Params, error) {
	p, err := diffusion.Preset(f.mode)
	if err != nil {
		return p, err
	}
	fl := cmd.Flags()
	p.GenLen = f.gen
	if fl.Changed("block") {
		p.BlockLen = f.block
	}
	if fl.Changed("tau-mask") {
		p.TauMask = f.tauMask
	}
	if fl.Changed("tau-edit") {
		p.TauEdit = f.tauEdit
		p.EditOff = false
	}
	if f.editOff {
		p.EditOff = true
	}
	if fl.Changed("max-post-steps") {
		p.MaxPostSteps = f.maxPost
	}
	p.Temperature, p.TopK, p.TopP, p.Seed, p.StopStrings = f.temperature, f.topK, f.topP, f.seed, f.stop
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("%w (see dlmesh %s --help)", err, cmd.Name())
	}
	return p, nil
}
