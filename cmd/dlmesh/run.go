package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/tokenizer"
)

func init() { extraCommands = append(extraCommands, runCmd) }

func runCmd() *cobra.Command {
	var df decodeFlags
	var pf precisionFlags
	var dir, backend string
	cmd := &cobra.Command{
		Use:   "run [--model DIR] [--mode q|s|v20] [--gen N] [flags] PROMPT|-",
		Short: "Generate in-process with a live view of the block being denoised",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := df.params(cmd)
			if err != nil {
				return err
			}
			prompt, err := promptArg(args[0], cmd.InOrStdin()) // "-": stdin
			if err != nil {
				return err
			}
			d, err := resolveModelDir(dir)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			tok, err := tokenizer.Load(d)
			if err != nil {
				return err
			}
			if _, _, err := pf.dtypes(); err != nil {
				return err
			}
			be, err := newBackend(backend)
			if err != nil {
				return err
			}
			defer be.Close()
			m, err := loadModel(ctx, d, be, true, nil)
			if err != nil {
				return err
			}
			defer m.Close()
			if err := pf.apply(m); err != nil {
				return err
			}
			eng := engine.New(engine.Config{MaskID: tok.MaskID(), EOSID: tok.EOSID(), Vocab: m.Cfg.Vocab, MaxContext: m.Cfg.MaxPositions}, engine.NewLocalStepper(m), tok)
			defer eng.Stop()
			req := engine.Request{ID: "run", Prompt: tok.Encode(prompt), Params: p, Trace: df.json, KeepSpecial: df.keepSpecial}
			if w := p.BlockWarning(diffusion.DefaultBlockLen); w != "" {
				fmt.Fprintln(os.Stderr, "warning:", w)
			}
			return runRequest(ctx, eng, tok, req, df.json)
		},
	}
	cmd.Flags().StringVar(&dir, "model", "", "model directory (default: the bundled llada2-tiny-go)")
	cmd.Flags().StringVar(&backend, "backend", "cpu", "kernels backend: cpu or cuda[:N]")
	pf.register(cmd, true, true)
	df.register(cmd)
	return cmd
}

// jsonStep is one step of the --json output, in the fixtures' trace format.
type jsonStep struct {
	Block     int      `json:"block"`
	Unmasked  []int    `json:"unmasked"`
	Edited    []int    `json:"edited"`
	Tokens    []int32  `json:"tokens"`
	MinMargin *float64 `json:"min_margin"`
}

type jsonResult struct {
	IDs          []int32    `json:"ids"`
	Text         string     `json:"text"`
	Forwards     int        `json:"forwards"`
	Steps        []jsonStep `json:"steps"`
	FinishReason string     `json:"finish_reason"`
	Degraded     bool       `json:"degraded,omitempty"`
}

func runRequest(ctx context.Context, eng *engine.Engine, tok *tokenizer.Tokenizer, req engine.Request, asJSON bool) error {
	out := os.Stdout
	v := newView(out)
	if asJSON {
		v = nil
	}
	start := time.Now()
	onEvent := func(ev engine.Event) {
		if v == nil {
			return
		}
		switch {
		case ev.Step != nil:
			v.draw(stepCells(tok, ev.Step, req), fmt.Sprintf("block %d · step %d · %d masked before · %.1f ms",
				ev.Step.Block, ev.Step.Step, ev.Step.MaskedBefore, ev.Step.StepMs))
		case ev.Block != nil:
			v.commit(ev.Block.Text)
		}
	}
	if v != nil {
		v.commit(tok.Decode(req.Prompt))
	}
	r, err := eng.Generate(ctx, req, onEvent)
	if err != nil {
		if v != nil {
			v.done()
		}
		return err
	}
	if asJSON {
		res := jsonResult{IDs: r.IDs, Text: r.Text, Forwards: r.Forwards, FinishReason: r.FinishReason, Degraded: r.Degraded, Steps: []jsonStep{}}
		if res.IDs == nil {
			res.IDs = []int32{}
		}
		for _, s := range r.Trace {
			js := jsonStep{Block: s.Block, Unmasked: orEmpty(s.Unmasked), Edited: orEmpty(s.Edited), Tokens: s.Tokens}
			if s.HasMargin {
				m := s.MinMargin
				js.MinMargin = &m
			}
			res.Steps = append(res.Steps, js)
		}
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(b))
		return nil
	}
	v.done()
	fmt.Fprintln(os.Stderr, summary(len(r.IDs), r.Forwards, time.Since(start), r.StepTime, r.FinishReason))
	return nil
}

func orEmpty(v []int) []int {
	if v == nil {
		return []int{}
	}
	return v
}

// stepCells turns a step event into the cells of the live view.
func stepCells(tok *tokenizer.Tokenizer, s *engine.StepEvent, req engine.Request) []cell {
	marks := map[int]int{}
	for _, c := range s.Changes {
		if c.Edit {
			marks[c.Pos+s.PromptLen] = markEdit
		} else {
			marks[c.Pos+s.PromptLen] = markUnmask
		}
	}
	cells := make([]cell, len(s.Tokens))
	for i, t := range s.Tokens {
		pos := s.BlockLo + i
		cells[i] = cell{mark: marks[pos], prompt: pos < s.PromptLen, beyond: pos >= s.PromptLen+req.Params.GenLen}
		if t == tok.MaskID() {
			cells[i].masked = true
		} else {
			cells[i].text = tok.Decode([]int32{t})
		}
	}
	return cells
}
