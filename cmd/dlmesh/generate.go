package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/gateway"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

func init() { extraCommands = append(extraCommands, generateCmd) }

func generateCmd() *cobra.Command {
	var df decodeFlags
	var addr, apiKey, chat string
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "generate [--addr 127.0.0.1:7070] [--mode q|s|v20] [--gen N] [flags] (PROMPT | - | --chat FILE)",
		Short: "Stream a generation from a gateway, with the same live view as 'dlmesh run'",
		Long: `Streams one generation from a gateway. PROMPT "-" reads the prompt from stdin; --chat FILE
(or - for stdin) sends {"messages": [{"role", "content"}, …]}, which the gateway renders with
the model's chat template.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			if (chat == "") == (len(args) == 0) {
				return fmt.Errorf("give a PROMPT (or - for stdin) or --chat FILE, not both")
			}
			ccfg, err := tf.client()
			if err != nil {
				return err
			}
			if chat != "" {
				msgs, err := chatFile(chat, cmd.InOrStdin())
				if err != nil {
					return err
				}
				df.messages = msgs
				return generateTo(ctx, cmd, addr, ccfg, apiKey, "", &df)
			}
			prompt, err := promptArg(args[0], cmd.InOrStdin())
			if err != nil {
				return err
			}
			return generateTo(ctx, cmd, addr, ccfg, apiKey, prompt, &df)
		},
	}
	cmd.Flags().StringVar(&chat, "chat", "", "send chat messages from this JSON file (- reads stdin) instead of a PROMPT")
	tf.register(cmd, false)
	cmd.Flags().StringVar(&addr, "addr", gateway.DefaultListen, "gateway address")
	cmd.Flags().StringVar(&apiKey, "api-key", os.Getenv("DLMESH_API_KEY"), "the gateway's API key, sent as authorization: Bearer KEY (default $DLMESH_API_KEY)")
	df.register(cmd)
	return cmd
}

// decodeParams maps the decoding flags the user set onto the wire parameters (unset ones are
// left to the gateway's preset).
func (f *decodeFlags) decodeParams(cmd *cobra.Command) (*pb.DecodeParams, error) {
	if _, err := f.params(cmd); err != nil { // validate locally first: a clear error, no round trip
		return nil, err
	}
	fl := cmd.Flags()
	p := &pb.DecodeParams{Mode: f.mode, GenLength: int32(f.gen), Temperature: f.temperature, TopK: int32(f.topK), TopP: f.topP, Seed: f.seed, Stop: f.stop}
	if fl.Changed("block") {
		p.BlockLength = int32(f.block)
	}
	if fl.Changed("tau-mask") {
		p.TauMask = &f.tauMask
	}
	if fl.Changed("tau-edit") {
		p.TauEdit = &f.tauEdit
	}
	if f.editOff {
		p.EditOff = &f.editOff
	}
	if fl.Changed("max-post-steps") {
		n := int32(f.maxPost)
		p.MaxPostSteps = &n
	}
	return p, nil
}

// liveBlock follows the block being denoised from step events, for the live view.
type liveBlock struct {
	block, start int32
	gen          int32 // gen_length: positions from it on are not returned
	cells        []cell
}

func (b *liveBlock) apply(s *pb.StepEvent) []cell {
	if b.cells == nil || s.Block != b.block || int(s.BlockLength) != len(b.cells) {
		b.block, b.start = s.Block, s.BlockStart
		b.cells = make([]cell, s.BlockLength)
		for i := range b.cells {
			b.cells[i] = cell{masked: true}
			if int32(i)+s.BlockStart < 0 {
				b.cells[i] = cell{prompt: true, text: "·"}
			}
			b.cells[i].beyond = b.gen > 0 && int32(i)+s.BlockStart >= b.gen
		}
	}
	for i := range b.cells {
		b.cells[i].mark = markNone
	}
	for _, c := range s.Changes {
		i := c.Position - b.start
		if i < 0 || int(i) >= len(b.cells) {
			continue
		}
		m := markUnmask
		if c.Kind == pb.TokenChange_KIND_EDIT {
			m = markEdit
		}
		b.cells[i] = cell{text: c.TokenText, mark: m, beyond: b.cells[i].beyond}
	}
	return b.cells
}

type jsonChangeStep struct {
	Block    int32   `json:"block"`
	Step     int32   `json:"step"`
	Unmasked []int32 `json:"unmasked"`
	Edited   []int32 `json:"edited"`
}

// generateTo streams one generation from the gateway at addr (dialled with ccfg) to stdout;
// apiKey (may be empty) goes along as the authorization metadata.
func generateTo(ctx context.Context, cmd *cobra.Command, addr string, ccfg services.ClientConfig, apiKey, prompt string, df *decodeFlags) error {
	params, err := df.decodeParams(cmd)
	if err != nil {
		return err
	}
	if apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiKey)
	}
	cl, err := gateway.Dial(addr, ccfg)
	if err != nil {
		return fmt.Errorf("gateway %s: %w", addr, err)
	}
	defer cl.Close()
	req := &pb.GenerateRequest{RequestId: fmt.Sprintf("cli-%d", time.Now().UnixNano()), Input: &pb.GenerateRequest_Prompt{Prompt: prompt}, Params: params,
		KeepSpecialTokens: df.keepSpecial}
	if df.messages != nil {
		req.Input = &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{Messages: df.messages}}
	}
	var v *view
	if !df.json {
		v = newView(os.Stdout)
		v.commit(prompt)
	}
	lb := liveBlock{gen: int32(df.gen)}
	var steps []jsonChangeStep
	start := time.Now()
	final, err := cl.Generate(ctx, req, func(ev *pb.GenerateEvent) error {
		switch e := ev.Event.(type) {
		case *pb.GenerateEvent_Step:
			s := e.Step
			if v != nil {
				line := fmt.Sprintf("block %d · step %d · %d masked before · %.1f ms", s.Block, s.Step, s.MaskedBefore, s.StepMs)
				if s.GetDegraded() {
					line += " · degraded (experts missing)"
				}
				v.draw(lb.apply(s), line)
			}
			js := jsonChangeStep{Block: s.Block, Step: s.Step, Unmasked: []int32{}, Edited: []int32{}}
			for _, c := range s.Changes {
				if c.Kind == pb.TokenChange_KIND_EDIT {
					js.Edited = append(js.Edited, c.Position)
				} else {
					js.Unmasked = append(js.Unmasked, c.Position)
				}
			}
			steps = append(steps, js)
		case *pb.GenerateEvent_Block:
			if v != nil {
				v.commit(e.Block.Text)
			}
		}
		return nil
	})
	if err != nil {
		if v != nil {
			v.done()
		}
		if st := status.Convert(err); st.Code() == codes.Unavailable && len(steps) == 0 && strings.HasPrefix(st.Message(), "connection error") {
			return fmt.Errorf("gateway %s is not reachable (start one with 'dlmesh up', or pass --addr): %w", addr, err)
		}
		return err
	}
	u := final.GetUsage()
	if df.json {
		ids := final.TokenIds
		if ids == nil {
			ids = []int32{}
		}
		b, err := json.Marshal(map[string]any{"ids": ids, "text": final.Text, "forwards": u.GetForwards(), "steps": steps,
			"finish_reason": final.FinishReason, "degraded": final.Degraded})
		if err != nil {
			return err
		}
		fmt.Println(string(b))
		return nil
	}
	v.done()
	stepTime := time.Duration(u.GetMsPerStep() * float64(u.GetForwards()) * float64(time.Millisecond))
	fmt.Fprintln(os.Stderr, summary(int(u.GetGeneratedTokens()), int(u.GetForwards()), time.Since(start), stepTime, final.FinishReason))
	if final.Degraded {
		fmt.Fprintln(os.Stderr, "warning: degraded: some experts had no healthy replica and were left out of the routing")
	}
	return nil
}
