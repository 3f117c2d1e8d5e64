package gateway

import (
	"fmt"

	"github.com/dlmesh/dlmesh/errdefs"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// Defaults of the Config bounds on what a client controls.
const (
	DefaultMaxPromptBytes    = 1 << 20 // prompt text, or all messages' text together, before tokenising
	DefaultMaxMessages       = 256
	DefaultMaxRequestIDBytes = 128
	DefaultMaxStreams        = 64 // concurrent Generate calls of one client connection
)

// input checks what the client sent against the bounds of cfg before anything costly is done
// with it (tokenising is superlinear in the longest word), renders messages with render, and returns the text
// to tokenise. Errors wrap errdefs.ErrInvalidArgument and name the field and the bound.
func (c Config) input(req *pb.GenerateRequest, render func([]Message) (string, error)) (string, error) {
	if n := len(req.GetRequestId()); n > c.MaxRequestIDBytes {
		return "", fmt.Errorf("gateway: request_id has %d bytes: want at most %d: %w", n, c.MaxRequestIDBytes, errdefs.ErrInvalidArgument)
	}
	switch in := req.GetInput().(type) {
	case *pb.GenerateRequest_Prompt:
		if n := len(in.Prompt); n > c.MaxPromptBytes {
			return "", fmt.Errorf("gateway: prompt has %d bytes: want at most %d (max_prompt_bytes): %w", n, c.MaxPromptBytes, errdefs.ErrInvalidArgument)
		}
		if in.Prompt == "" {
			return "", fmt.Errorf("gateway: prompt is empty: %w", errdefs.ErrInvalidArgument)
		}
		return in.Prompt, nil
	case *pb.GenerateRequest_Messages:
		ms := in.Messages.GetMessages()
		if len(ms) > c.MaxMessages {
			return "", fmt.Errorf("gateway: messages has %d turns: want at most %d (max_messages): %w", len(ms), c.MaxMessages, errdefs.ErrInvalidArgument)
		}
		msgs := make([]Message, len(ms))
		total := 0
		for i, m := range ms {
			total += len(m.GetRole()) + len(m.GetContent())
			if total > c.MaxPromptBytes {
				return "", fmt.Errorf("gateway: messages[0..%d] hold over %d bytes (max_prompt_bytes): %w", i, c.MaxPromptBytes, errdefs.ErrInvalidArgument)
			}
			msgs[i] = Message{Role: m.GetRole(), Content: m.GetContent()}
		}
		return render(msgs)
	}
	return "", fmt.Errorf("gateway: input: want prompt or messages: %w", errdefs.ErrInvalidArgument)
}
