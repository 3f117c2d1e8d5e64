package gateway

import (
	"errors"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/errdefs"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// TestInputBounds: what a client sends is bounded before it is tokenised: the prompt's bytes,
// the messages' count and bytes, the request_id; each refusal names the field and the bound.
func TestInputBounds(t *testing.T) {
	cfg := Config{ModelDir: "x", MaxPromptBytes: 64, MaxMessages: 2, MaxRequestIDBytes: 8}.WithDefaults()
	prompt := func(s string) *pb.GenerateRequest {
		return &pb.GenerateRequest{Input: &pb.GenerateRequest_Prompt{Prompt: s}}
	}
	msgs := func(ms ...*pb.ChatMessage) *pb.GenerateRequest {
		return &pb.GenerateRequest{Input: &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{Messages: ms}}}
	}
	user := func(s string) *pb.ChatMessage { return &pb.ChatMessage{Role: "user", Content: s} }
	withID := prompt("hi")
	withID.RequestId = "123456789"
	for _, tc := range []struct {
		name  string
		req   *pb.GenerateRequest
		field string // "" = accepted
	}{
		{"prompt at the bound", prompt(strings.Repeat("a", 64)), ""},
		{"prompt past the bound", prompt(strings.Repeat("a", 65)), "prompt has 65 bytes: want at most 64"},
		{"empty prompt", prompt(""), "prompt is empty"},
		{"no input", &pb.GenerateRequest{}, "input"},
		{"two messages", msgs(user("a"), user("b")), ""},
		{"too many messages", msgs(user("a"), user("b"), user("c")), "messages has 3 turns: want at most 2"},
		{"messages past the bytes", msgs(user(strings.Repeat("a", 40)), user(strings.Repeat("b", 40))), "max_prompt_bytes"},
		{"long request_id", withID, "request_id has 9 bytes: want at most 8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cfg.input(tc.req, RenderChat)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("err %v, want InvalidArgument naming %q", err, tc.field)
			}
		})
	}
	if d := (Config{}).WithDefaults(); d.Server.MaxConcurrentStreams != DefaultMaxStreams || d.Server.MaxRecvMsgBytes != DefaultMaxPromptBytes+1<<20 {
		t.Errorf("default server bounds: %d streams per connection, %d-byte messages", d.Server.MaxConcurrentStreams, d.Server.MaxRecvMsgBytes)
	}
}
