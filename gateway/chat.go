package gateway

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dlmesh/dlmesh/chat"
	"github.com/dlmesh/dlmesh/errdefs"
)

// Message is one chat turn.
type Message struct {
	Role    string `json:"role"` // any role the template accepts: system, user, assistant, tool, …
	Content string `json:"content"`
}

// ChatTemplate renders chat turns into a prompt with a model's chat template (package chat).
type ChatTemplate struct {
	tmpl *chat.Template
}

// LoadChatTemplate reads modelDir's chat template: tokenizer_config.json's chat_template, or
// the built-in default (see the package doc) when it has none.
func LoadChatTemplate(modelDir string) (*ChatTemplate, error) {
	t, err := chat.Load(modelDir)
	if err != nil {
		return nil, err
	}
	return &ChatTemplate{tmpl: t}, nil
}

// IsDefault reports whether the model has no template of its own.
func (c *ChatTemplate) IsDefault() bool { return c.tmpl.IsDefault() }

// Render renders msgs with add_generation_prompt true, so the model continues as the assistant.
// Errors wrap errdefs.ErrInvalidArgument.
func (c *ChatTemplate) Render(msgs []Message) (string, error) {
	if len(msgs) == 0 {
		return "", fmt.Errorf("gateway: messages is empty: %w", errdefs.ErrInvalidArgument)
	}
	req := chat.Request{Messages: make([]any, len(msgs)), AddGenerationPrompt: true}
	for i, m := range msgs {
		req.Messages[i] = m
	}
	text, err := c.tmpl.Render(req)
	if errors.Is(err, chat.ErrBadRequest) {
		return "", fmt.Errorf("gateway: %s: %w", strings.TrimPrefix(err.Error(), chat.ErrBadRequest.Error()+": "), errdefs.ErrInvalidArgument)
	}
	return text, err
}

var defaultChat = &ChatTemplate{tmpl: chat.Default()}

// RenderChat renders messages with the built-in default template (see the package doc): every
// turn as `<role>ROLE</role>CONTENT<|role_end|>`, then `<role>assistant</role>`. A role must be
// a non-empty word of [a-z_]; content must not contain the template's markers.
func RenderChat(msgs []Message) (string, error) { return defaultChat.Render(msgs) }

// RenderMessages renders messages as the Jinja template sees them (role, content and whatever
// else a message carries: tool_calls, tool_call_id, name, …) with the request's tool
// definitions, as the OpenAI-compatible API hands them over. Errors wrap
// errdefs.ErrInvalidArgument.
func (c *ChatTemplate) RenderMessages(messages []map[string]any, tools []map[string]any, addGenerationPrompt bool) (string, error) {
	if len(messages) == 0 {
		return "", fmt.Errorf("gateway: messages is empty: %w", errdefs.ErrInvalidArgument)
	}
	req := chat.Request{Messages: make([]any, len(messages)), AddGenerationPrompt: addGenerationPrompt}
	for i, m := range messages {
		req.Messages[i] = m
	}
	for _, t := range tools {
		req.Tools = append(req.Tools, t)
	}
	text, err := c.tmpl.Render(req)
	if errors.Is(err, chat.ErrBadRequest) {
		return "", fmt.Errorf("gateway: %s: %w", strings.TrimPrefix(err.Error(), chat.ErrBadRequest.Error()+": "), errdefs.ErrInvalidArgument)
	}
	return text, err
}
