package gateway

import (
	"fmt"
	"strings"

	"github.com/dlmesh/dlmesh/errdefs"
)

// ChatRenderer renders chat messages into the prompt text the model continues. Messages are
// passed as the Jinja template sees them (role, content, and whatever else a message carries:
// tool_calls, tool_call_id, name, …), tools as the request's tool definitions.
type ChatRenderer interface {
	Render(messages []map[string]any, tools []map[string]any, addGenerationPrompt bool) (string, error)
}

// DefaultChat is the built-in template, used when the model has none: every turn as
// `<role>ROLE</role>CONTENT<|role_end|>` and, with the generation prompt, `<role>assistant</role>`.
// It knows only role and content; tools are refused.
type DefaultChat struct{}

// Render implements ChatRenderer.
func (DefaultChat) Render(messages []map[string]any, tools []map[string]any, addGenerationPrompt bool) (string, error) {
	if len(tools) > 0 {
		return "", fmt.Errorf("gateway: tools: the model has no chat template that renders tools: %w", errdefs.ErrInvalidArgument)
	}
	msgs := make([]Message, len(messages))
	for i, m := range messages {
		role, _ := m["role"].(string)
		content, ok := m["content"].(string)
		if !ok && m["content"] != nil {
			return "", fmt.Errorf("gateway: messages[%d].content must be a string: %w", i, errdefs.ErrInvalidArgument)
		}
		msgs[i] = Message{Role: role, Content: content}
	}
	text, err := RenderChat(msgs)
	if err == nil && !addGenerationPrompt {
		text = strings.TrimSuffix(text, assistantOpen)
	}
	return text, err
}

// Message is one chat turn.
type Message struct {
	Role    string // "system", "user", "assistant" (any lowercase word is accepted)
	Content string
}

// RenderChat renders messages with the default LLaDA2 chat template (see the package doc):
// every turn as `<role>ROLE</role>CONTENT<|role_end|>`, then `<role>assistant</role>` so the
// model continues as the assistant. A role must be a non-empty word of [a-z_] and must not
// contain the template's markers; content must not contain `<|role_end|>`.
func RenderChat(msgs []Message) (string, error) {
	if len(msgs) == 0 {
		return "", fmt.Errorf("gateway: messages is empty: %w", errdefs.ErrInvalidArgument)
	}
	var b strings.Builder
	for i, m := range msgs {
		if m.Role == "" || strings.IndexFunc(m.Role, func(r rune) bool { return (r < 'a' || r > 'z') && r != '_' }) >= 0 {
			return "", fmt.Errorf("gateway: messages[%d].role %q must be a lowercase word ([a-z_]+): %w", i, m.Role, errdefs.ErrInvalidArgument)
		}
		if strings.Contains(m.Content, roleEnd) {
			return "", fmt.Errorf("gateway: messages[%d].content contains the turn marker %s: %w", i, roleEnd, errdefs.ErrInvalidArgument)
		}
		b.WriteString("<role>")
		b.WriteString(m.Role)
		b.WriteString("</role>")
		b.WriteString(m.Content)
		b.WriteString(roleEnd)
	}
	b.WriteString(assistantOpen)
	return b.String(), nil
}

const (
	roleEnd       = "<|role_end|>"
	assistantOpen = "<role>assistant</role>"
)
