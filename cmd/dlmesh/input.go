package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// maxInputBytes bounds a prompt or chat file read from a file or stdin.
const maxInputBytes = 16 << 20

// promptArg is a PROMPT argument as given, or, for "-", what stdin holds.
func promptArg(arg string, stdin io.Reader) (string, error) {
	if arg != "-" {
		return arg, nil
	}
	b, err := io.ReadAll(io.LimitReader(stdin, maxInputBytes+1))
	if err != nil {
		return "", fmt.Errorf("read the prompt from stdin: %w", err)
	}
	if len(b) > maxInputBytes {
		return "", fmt.Errorf("prompt on stdin: over %d bytes", maxInputBytes)
	}
	return string(b), nil
}

// chatFile reads --chat FILE ("-": stdin): {"messages": [{"role", "content"}, …]}, the messages
// a gateway renders with the model's chat template. Tools travel only over the HTTP API
// (/v1/chat/completions): the gRPC request has no field for them, so they are refused here.
func chatFile(path string, stdin io.Reader) ([]*pb.ChatMessage, error) {
	var r io.Reader = stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("--chat: %w", err)
		}
		defer f.Close()
		r = f
	}
	var req struct {
		Messages []struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"messages"`
		Tools json.RawMessage `json:"tools"`
	}
	dec := json.NewDecoder(io.LimitReader(r, maxInputBytes))
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("--chat %s: want {\"messages\": [{\"role\": …, \"content\": …}]}: %w", path, err)
	}
	if len(req.Tools) > 0 && string(req.Tools) != "null" && string(req.Tools) != "[]" {
		return nil, fmt.Errorf("--chat %s: tools are not sent over gRPC; use the HTTP API's /v1/chat/completions (or dlmesh tokenize --chat to see the prompt)", path)
	}
	if len(req.Messages) == 0 {
		return nil, fmt.Errorf("--chat %s: messages is empty", path)
	}
	msgs := make([]*pb.ChatMessage, len(req.Messages))
	for i, m := range req.Messages {
		msgs[i] = &pb.ChatMessage{Role: m.Role, Content: m.Content}
	}
	return msgs, nil
}
