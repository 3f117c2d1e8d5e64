package gateway_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/gateway"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

const tinyDir = "../models/llada2-tiny-go"

// generateFields are the fields an InvalidArgument from Generate may name.
var generateFields = []string{"input", "prompt", "messages", "role", "content", "mode", "gen_length", "block_length",
	"temperature", "top_k", "top_p", "tau_mask", "tau_edit", "max_post_steps", "stop", "seed", "request_id"}

// FuzzGenerate sends crafted Generate requests (prompt or messages, every decoding parameter,
// stop strings) to a real gateway whose only attnd does not answer: a request the gateway's
// validation accepts fails with Unavailable at its first attnd call, one it refuses gets
// InvalidArgument naming a field. Never a panic, never another code; a non-finite float is
// always refused.
func FuzzGenerate(f *testing.F) {
	reg := services.NewMemRegistry()
	// an attnd address nothing listens on: accepted requests fail fast with Unavailable
	if err := reg.Register(context.Background(), services.Instance{ID: "attnd-dead", Kind: services.KindAttnd, Addr: "127.0.0.1:1"}); err != nil {
		f.Fatal(err)
	}
	s, err := gateway.New(context.Background(), gateway.Config{ModelDir: tinyDir, Listen: "127.0.0.1:0"}, reg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	c, err := gateway.Dial(s.Addr(), services.ClientConfig{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = c.Close() })

	f.Add("func main() {", false, "user", "", "q", int32(32), int32(32), 0.0, int32(0), 0.0, 0.7, 0.5, int32(16), "")
	f.Add("", true, "user", "hi", "s", int32(0), int32(0), 0.7, int32(50), 0.9, 0.5, 0.0, int32(-1), "\n\x00END")
	f.Add("x", false, "", "", "v20", int32(-1), int32(4096), math.NaN(), int32(-3), 2.0, 0.0, 1.5, int32(99), "")
	f.Add("a<|mask|>b", false, "", "", "", int32(8), int32(8), 1.0, int32(5000), math.Inf(1), math.Inf(-1), math.NaN(), int32(0), "\x00\x00")
	f.Add("", true, "User", "a<|role_end|>b", "zz", int32(1), int32(1), -1.0, int32(1), 1.0, 1.0, 0.0, int32(0), strings.Repeat("s\x00", 20))
	f.Add(strings.Repeat("a", 3000), false, "", "", "q", int32(1<<20), int32(33), 0.0, int32(0), 0.0, 0.7, 0.5, int32(16), "")
	f.Fuzz(func(t *testing.T, prompt string, chat bool, role, content, mode string, genLen, blockLen int32,
		temperature float64, topK int32, topP, tauMask, tauEdit float64, maxPost int32, stops string) {
		valid := func(s string) string { return strings.ToValidUTF8(s, "?") }
		req := &pb.GenerateRequest{RequestId: "fuzz"}
		if chat {
			req.Input = &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{Messages: []*pb.ChatMessage{
				{Role: valid(role), Content: valid(content)}, {Role: "user", Content: valid(prompt)}}}}
		} else {
			req.Input = &pb.GenerateRequest_Prompt{Prompt: valid(prompt)}
		}
		p := &pb.DecodeParams{Mode: valid(mode), GenLength: genLen, BlockLength: blockLen, Temperature: temperature,
			TopK: topK, TopP: topP, TauMask: &tauMask, TauEdit: &tauEdit}
		if maxPost >= 0 {
			p.MaxPostSteps = &maxPost
		}
		if stops != "" {
			p.Stop = strings.Split(valid(stops), "\x00")
		}
		req.Params = p
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := c.Generate(ctx, req, nil)
		nonFinite := false
		for _, v := range []float64{temperature, topP, tauMask, tauEdit} {
			nonFinite = nonFinite || math.IsNaN(v) || math.IsInf(v, 0)
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.ResourceExhausted: // accepted, then no attnd / queue full
			if nonFinite {
				t.Fatalf("accepted a non-finite parameter: %v", p)
			}
		case codes.InvalidArgument:
			msg := status.Convert(err).Message()
			named := false
			for _, f := range generateFields {
				named = named || strings.Contains(msg, f)
			}
			if !named {
				t.Fatalf("InvalidArgument names no field: %q", msg)
			}
		default:
			t.Fatalf("Generate: %v (want InvalidArgument, or Unavailable once accepted)", err)
		}
	})
}
