package chat

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dlmesh/dlmesh/internal/realformat"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// chatCase is one case of chat_cases.json or chat_extra_cases.json; messages and tools stay JSON
// text so their key order is the fixture's.
type chatCase struct {
	Messages            json.RawMessage `json:"messages"`
	Tools               json.RawMessage `json:"tools"`
	AddGenerationPrompt *bool           `json:"add_generation_prompt"`
	Rendered            string          `json:"rendered"`
	IDs                 []int32         `json:"ids"`
}

func loadCases(t *testing.T, name string) []chatCase {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(realformat.FixturesDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Cases []chatCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Cases) == 0 {
		t.Fatalf("%s: no cases", name)
	}
	return f.Cases
}

// request builds the Request of a case the way the CLI does, through ParseRequest.
func (c chatCase) request(t *testing.T) Request {
	t.Helper()
	body := map[string]json.RawMessage{"messages": c.Messages}
	if c.Tools != nil {
		body["tools"] = c.Tools
	}
	if c.AddGenerationPrompt != nil {
		b, _ := json.Marshal(*c.AddGenerationPrompt)
		body["add_generation_prompt"] = b
	}
	b, _ := json.Marshal(body)
	req, err := ParseRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func realTemplate(t *testing.T) *Template {
	t.Helper()
	tmpl, err := Load(realformat.TokenizerDir(t))
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.IsDefault() {
		t.Fatal("the real-format config has a chat_template; Load gave the default")
	}
	return tmpl
}

// TestRealTemplateCases renders chat_cases.json (made by Python jinja2 as Hugging Face does) and
// checks the text and its ids.
func TestRealTemplateCases(t *testing.T) {
	tmpl := realTemplate(t)
	tok, err := tokenizer.Load(realformat.TokenizerDir(t))
	if err != nil {
		t.Fatal(err)
	}
	cases := loadCases(t, "chat_cases.json")
	pass := 0
	for i, c := range cases {
		got, err := tmpl.Render(c.request(t))
		if err != nil {
			t.Errorf("case %d: %v", i, err)
			continue
		}
		if got != c.Rendered {
			t.Errorf("case %d rendered\n got %q\nwant %q", i, got, c.Rendered)
			continue
		}
		if ids := tok.Encode(got); !slices.Equal(ids, c.IDs) {
			t.Errorf("case %d ids\n got %v\nwant %v", i, ids, c.IDs)
			continue
		}
		pass++
	}
	t.Logf("chat cases: %d/%d (text and ids)", pass, len(cases))
}

// TestRealTemplateExtraCases: tool calls (objects and strings, nested function), consecutive
// tool results, reasoning in <think> and reasoning_content, a system turn mid-conversation, null
// content, non-ASCII and HTML characters in tojson (chat_extra_cases.json, gen_chat_extra.py).
func TestRealTemplateExtraCases(t *testing.T) {
	tmpl := realTemplate(t)
	for i, c := range loadCases(t, "chat_extra_cases.json") {
		got, err := tmpl.Render(c.request(t))
		if err != nil {
			t.Errorf("case %d: %v", i, err)
			continue
		}
		if got != c.Rendered {
			t.Errorf("case %d rendered\n got %q\nwant %q", i, got, c.Rendered)
		}
	}
}

func TestGoValues(t *testing.T) {
	tmpl := realTemplate(t)
	type msg struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	}
	want := "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>"
	for name, m := range map[string]any{
		"map":    map[string]any{"role": "user", "content": "Hi"},
		"struct": msg{"user", "Hi"},
		"raw":    json.RawMessage(`{"role":"user","content":"Hi"}`),
	} {
		got, err := tmpl.Render(Request{Messages: []any{m}, AddGenerationPrompt: true})
		if err != nil || got != want {
			t.Errorf("%s: Render = %q, %v; want %q", name, got, err, want)
		}
	}
	// A tool with Go numbers and nested lists reaches tojson.
	got, err := tmpl.Render(Request{
		Messages: []any{map[string]any{"role": "user", "content": "x"}},
		Tools:    []any{map[string]any{"name": "f", "n": 3, "xs": []any{1.5, "é", nil, true}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, `{"n": 3, "name": "f", "xs": [1.5, "é", null, true]}`) {
		t.Errorf("tool not rendered by tojson as expected:\n%s", got)
	}
}

func TestVarsAndTokens(t *testing.T) {
	tmpl, err := New(`{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}{% if enable_thinking %}T{% endif %}{{ eos_token }}`, "<s>", "</s>")
	if err != nil {
		t.Fatal(err)
	}
	got, err := tmpl.Render(Request{Messages: []any{map[string]any{"role": "tool", "content": "r"}},
		Vars: map[string]any{"enable_thinking": true, "messages": "cannot replace"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := "<s>tool:r;T</s>"; got != want {
		t.Errorf("Render = %q, want %q", got, want)
	}
}

func TestLoopControlsAndTrim(t *testing.T) {
	src := "{% for m in messages %}\n  {% if loop.index0 == 1 %}{% continue %}{% endif %}\n  {{ m.content }}|\n  {% if loop.index0 == 2 %}{% break %}{% endif %}\n{% endfor %}"
	tmpl, err := New(src, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var msgs []any
	for _, c := range []string{"a", "b", "c", "d"} {
		msgs = append(msgs, map[string]any{"role": "user", "content": c})
	}
	got, err := tmpl.Render(Request{Messages: msgs})
	if err != nil {
		t.Fatal(err)
	}
	// jinja2 with trim_blocks and lstrip_blocks renders "  a|\n  c|\n".
	if want := "  a|\n  c|\n"; got != want {
		t.Errorf("Render = %q, want %q", got, want)
	}
}

func TestRaiseException(t *testing.T) {
	tmpl, err := New(`{% if messages[0].role != 'user' %}{{ raise_exception('Conversation roles must start with user') }}{% endif %}ok`, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tmpl.Render(Request{Messages: []any{map[string]any{"role": "assistant", "content": "x"}}})
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "Conversation roles must start with user") {
		t.Errorf("err = %v, want ErrBadRequest with the template's message", err)
	}
}

func TestDefaultTemplate(t *testing.T) {
	d := Default()
	if !d.IsDefault() {
		t.Fatal("Default is not marked default")
	}
	got, err := d.Render(Request{Messages: []any{
		map[string]any{"role": "system", "content": "s"},
		map[string]any{"role": "user", "content": "u"},
	}, AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := "<role>system</role>s<|role_end|><role>user</role>u<|role_end|><role>assistant</role>"; got != want {
		t.Errorf("Render = %q, want %q", got, want)
	}
	for _, c := range []struct {
		msg  map[string]any
		want string
	}{
		{map[string]any{"role": "User", "content": "x"}, `messages[0].role "User" must be a lowercase word`},
		{map[string]any{"role": 5, "content": "x"}, "messages[0].role must be a string"},
		{map[string]any{"role": "", "content": "x"}, "messages[0].role"},
		{map[string]any{"role": "a b", "content": "x"}, "messages[0].role"},
		{map[string]any{"role": "user", "content": "x<|role_end|>"}, "messages[0].content contains a turn marker"},
	} {
		_, err := d.Render(Request{Messages: []any{c.msg}})
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Render(%v) err = %v, want %q", c.msg, err, c.want)
		}
	}
	// A model directory without a template gets the default, with its own bos and eos.
	tmpl, err := Load(filepath.Join(realformat.Root(t), "models", "llada2-tiny-go"))
	if err != nil || !tmpl.IsDefault() {
		t.Fatalf("Load(bundled) = %v, %v; want the default", tmpl, err)
	}
	if tmpl, err = Load(t.TempDir()); err != nil || !tmpl.IsDefault() {
		t.Fatalf("Load(empty dir) = %v, %v; want the default", tmpl, err)
	}
}

func TestBadRequests(t *testing.T) {
	tmpl := realTemplate(t)
	for _, c := range []struct {
		req  Request
		want string
	}{
		{Request{}, "messages is empty"},
		{Request{Messages: []any{"hi"}}, "messages[0]: want a JSON object"},
		{Request{Messages: []any{json.RawMessage(`{"role":`)}}, "messages[0]"},
		{Request{Messages: []any{map[string]any{"role": "user", "content": "x"}}, Tools: []any{json.RawMessage(`[1]`)}}, "tools[0]: want a JSON object"},
		{Request{Messages: []any{map[string]any{"role": "user", "content": "x"}}, Vars: map[string]any{"f": func() {}}}, `vars["f"]`},
	} {
		_, err := tmpl.Render(c.req)
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Render(%+v) err = %v, want ErrBadRequest with %q", c.req, err, c.want)
		}
	}
	for _, c := range []struct{ body, want string }{
		{`[]`, "want a JSON object"},
		{`{}`, "messages is missing"},
		{`{"messages": {"role": "user"}}`, "messages: want a list"},
		{`{"messages": [], "tools": "x"}`, "tools: want a list"},
		{`{"messages": [], "add_generation_prompt": "yes"}`, "add_generation_prompt"},
	} {
		_, err := ParseRequest([]byte(c.body))
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseRequest(%s) err = %v, want %q", c.body, err, c.want)
		}
	}
	req, err := ParseRequest([]byte(`{"messages": [{"role": "user", "content": "x"}], "enable_thinking": true}`))
	if err != nil || !req.AddGenerationPrompt || req.Vars["enable_thinking"] == nil {
		t.Errorf("ParseRequest defaults: %+v, %v", req, err)
	}
}

func TestConfigForms(t *testing.T) {
	for _, c := range []struct {
		config  string
		def     bool
		wantErr string
	}{
		{`{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ bos_token }}"}], "bos_token": {"content": "<s>"}}`, false, ""},
		{`{"chat_template": null}`, true, ""},
		{`{"chat_template": 5}`, false, "chat_template"},
		{`{"eos_token": 5}`, false, "eos_token"},
		{`{"chat_template": "{% for %}"}`, false, "compile"},
		{`[`, false, "tokenizer_config.json"},
	} {
		tmpl, err := FromConfig([]byte(c.config))
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("FromConfig(%s) err = %v, want %q", c.config, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("FromConfig(%s): %v", c.config, err)
			continue
		}
		if tmpl.IsDefault() != c.def {
			t.Errorf("FromConfig(%s).IsDefault() = %v", c.config, tmpl.IsDefault())
		}
		if !c.def {
			got, _ := tmpl.Render(Request{Messages: []any{map[string]any{"role": "user"}}})
			if got != "D<s>" {
				t.Errorf("list template rendered %q, want %q", got, "D<s>")
			}
		}
	}
}

func TestConcurrentRender(t *testing.T) {
	tmpl := realTemplate(t)
	cases := loadCases(t, "chat_cases.json")
	reqs := make([]Request, len(cases))
	for i, c := range cases {
		reqs[i] = c.request(t)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for k := range 20 {
				i := (g + k) % len(cases)
				if got, err := tmpl.Render(reqs[i]); err != nil || got != cases[i].Rendered {
					t.Errorf("goroutine %d case %d: %v", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
