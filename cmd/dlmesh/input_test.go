package main

import (
	"strings"
	"testing"
)

func TestPromptArg(t *testing.T) {
	for _, c := range []struct{ arg, stdin, want string }{
		{"func main() {", "ignored", "func main() {"},
		{"-", "from stdin\n", "from stdin\n"},
	} {
		got, err := promptArg(c.arg, strings.NewReader(c.stdin))
		if err != nil || got != c.want {
			t.Errorf("promptArg(%q) = %q, %v; want %q", c.arg, got, err, c.want)
		}
	}
	if _, err := promptArg("-", strings.NewReader(strings.Repeat("a", maxInputBytes+1))); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("an oversized stdin prompt: %v, want an error saying it is over the bound", err)
	}
}

func TestChatFile(t *testing.T) {
	msgs, err := chatFile("-", strings.NewReader(`{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "tools": []}`))
	if err != nil || len(msgs) != 2 || msgs[1].GetRole() != "user" || msgs[1].GetContent() != "Hi" {
		t.Fatalf("chatFile = %v, %v", msgs, err)
	}
	for name, c := range map[string]struct{ in, want string }{
		"not json":    {`{"messages": [`, "want {"},
		"no messages": {`{"messages": []}`, "messages is empty"},
		"tools":       {`{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}`, "HTTP API"},
	} {
		if _, err := chatFile("-", strings.NewReader(c.in)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, c.want)
		}
	}
	if _, err := chatFile("/nonexistent/chat.json", nil); err == nil || !strings.Contains(err.Error(), "--chat") {
		t.Errorf("a missing file: %v, want an error naming --chat", err)
	}
}
