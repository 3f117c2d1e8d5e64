package gateway

import (
	"fmt"
	"strings"

	"github.com/dlmesh/dlmesh/errdefs"
)

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
	b.WriteString("<role>assistant</role>")
	return b.String(), nil
}

const roleEnd = "<|role_end|>"
