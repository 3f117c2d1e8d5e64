package gateway

import (
	"errors"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/internal/realformat"
)

func TestChatTemplateRealFormat(t *testing.T) {
	c, err := LoadChatTemplate(realformat.ModelDir(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.IsDefault() {
		t.Fatal("real-format model directory gave the default template")
	}
	got, err := c.Render([]Message{{"system", "Be brief."}, {"user", "hi"}, {"assistant", "<think>x</think>yo"}, {"tool", "42"}})
	want := "<role>SYSTEM</role>Be brief.\ndetailed thinking off<|role_end|><role>HUMAN</role>hi<|role_end|>" +
		"<role>ASSISTANT</role>\n<think>\nx\n</think>\n\nyo<|role_end|>" +
		"<role>OBSERVATION</role>\n<tool_response>\n42\n</tool_response><|role_end|><role>ASSISTANT</role>"
	if err != nil || got != want {
		t.Errorf("Render = %q, %v\nwant %q", got, err, want)
	}
	if _, err := c.Render(nil); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "messages") {
		t.Errorf("Render(nil) err = %v, want ErrBadRequest naming messages", err)
	}
}

func TestChatTemplateDefault(t *testing.T) {
	c, err := LoadChatTemplate(realformat.Root(t) + "/models/llada2-tiny-go")
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsDefault() {
		t.Fatal("bundled model has no chat_template; want the default")
	}
	_, err = c.Render([]Message{{"User", "x"}})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), `messages[0].role "User"`) || strings.Contains(err.Error(), "chat: bad request") {
		t.Errorf("err = %v, want one ErrBadRequest naming messages[0].role", err)
	}
}
