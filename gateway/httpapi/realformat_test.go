package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/internal/realformat"
	"github.com/dlmesh/dlmesh/mesh"
)

type completionResponse struct {
	Choices []struct {
		Text    string `json:"text"`
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

func postJSON(tb testing.TB, url string, body any) completionResponse {
	tb.Helper()
	b, _ := json.Marshal(body)
	res, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	var out completionResponse
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil || res.StatusCode != 200 || len(out.Choices) != 1 {
		tb.Fatalf("POST %s: status %d, %v, %+v", url, res.StatusCode, err, out)
	}
	return out
}

// Chat over a model directory in the real LLaDA2.x formats renders the messages (and tools) with
// the hub's Jinja template exactly as jinja2 does: the prompt has the reference's ids (the
// fixture's chat cases), and the answer equals a completion of those ids.
func TestChatRealFormat(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a second mesh; skipped with -short")
	}
	b, err := os.ReadFile(filepath.Join(realformat.FixturesDir(t), "chat_cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Cases []struct {
			Messages            []map[string]any `json:"messages"`
			Tools               []map[string]any `json:"tools"`
			AddGenerationPrompt *bool            `json:"add_generation_prompt"`
			IDs                 []int32          `json:"ids"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := mesh.Up(ctx, mesh.Config{ModelDir: realformat.ModelDir(t), Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	base := "http://" + m.Addrs().HTTP + "/v1"
	checked := 0
	for i, c := range f.Cases {
		if c.AddGenerationPrompt != nil && !*c.AddGenerationPrompt {
			continue // the API always asks for the assistant's turn
		}
		t.Run(fmt.Sprint("case", i), func(t *testing.T) {
			params := map[string]any{"max_tokens": 16, "temperature": 0, "mode": "s"}
			chat := map[string]any{"messages": c.Messages}
			if len(c.Tools) > 0 {
				chat["tools"] = c.Tools
			}
			comp := map[string]any{"prompt": c.IDs}
			for k, v := range params {
				chat[k], comp[k] = v, v
			}
			got := postJSON(t, base+"/chat/completions", chat)
			want := postJSON(t, base+"/completions", comp)
			if got.Usage.PromptTokens != len(c.IDs) {
				t.Errorf("chat prompt of %d tokens, the reference renders %d", got.Usage.PromptTokens, len(c.IDs))
			}
			if got.Choices[0].Message.Content != want.Choices[0].Text || got.Usage.CompletionTokens != want.Usage.CompletionTokens {
				t.Errorf("chat %q (%d tokens), completion of the reference ids %q (%d)", got.Choices[0].Message.Content,
					got.Usage.CompletionTokens, want.Choices[0].Text, want.Usage.CompletionTokens)
			}
		})
		checked++
	}
	if checked < 3 {
		t.Fatalf("only %d chat cases checked", checked)
	}
}
