package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/internal/realformat"
)

// runTokenize runs `dlmesh tokenize args…` with stdin and returns stdout and the error.
func runTokenize(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := tokenizeCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestTokenizeRealFormat(t *testing.T) {
	dir := realformat.ModelDir(t)
	out, err := runTokenize(t, "", "--model", dir, "it's")
	if err != nil || strings.TrimSpace(out) != "[300,982]" {
		t.Errorf("tokenize it's = %q, %v; want [300,982]", out, err)
	}
}

// TestTokenizeChat renders every chat_cases.json case through --chat (file and stdin) and
// checks the ids and, with --render, the text.
func TestTokenizeChat(t *testing.T) {
	dir := realformat.ModelDir(t)
	b, err := os.ReadFile(filepath.Join(realformat.FixturesDir(t), "chat_cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Cases []map[string]json.RawMessage `json:"cases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	for i, c := range f.Cases {
		var want []int32
		var rendered string
		_ = json.Unmarshal(c["ids"], &want)
		_ = json.Unmarshal(c["rendered"], &rendered)
		body := map[string]json.RawMessage{"messages": c["messages"]}
		for _, k := range []string{"tools", "add_generation_prompt"} {
			if v, ok := c[k]; ok {
				body[k] = v
			}
		}
		req, _ := json.Marshal(body)
		path := filepath.Join(t.TempDir(), "chat.json")
		if err := os.WriteFile(path, req, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runTokenize(t, "", "--model", dir, "--chat", path)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		var got []int32
		if err := json.Unmarshal([]byte(out), &got); err != nil || !slices.Equal(got, want) {
			t.Errorf("case %d: --chat printed %q (%v), want %v", i, out, err, want)
		}
		out, err = runTokenize(t, string(req), "--model", dir, "--chat", "-", "--render")
		if err != nil || out != rendered {
			t.Errorf("case %d: --chat - --render = %q, %v; want %q", i, out, err, rendered)
		}
	}
}

func TestTokenizeChatDefaultTemplate(t *testing.T) {
	out, err := runTokenize(t, `{"messages": [{"role": "user", "content": "hi"}]}`, "--chat", "-", "--render")
	if want := "<role>user</role>hi<|role_end|><role>assistant</role>"; err != nil || out != want {
		t.Errorf("bundled model --render = %q, %v; want %q", out, err, want)
	}
}

func TestTokenizeChatErrors(t *testing.T) {
	dir := realformat.ModelDir(t)
	for _, c := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"", []string{"--model", dir, "--render", "x"}, "--render needs --chat"},
		{"", []string{"--model", dir, "--chat", "-", "x"}, "no TEXT"},
		{"", []string{"--model", dir, "--chat", "-", "--decode"}, "exclude"},
		{"", []string{"--model", dir, "--chat", filepath.Join(t.TempDir(), "missing.json")}, "--chat"},
		{"{", []string{"--model", dir, "--chat", "-"}, "want a JSON object"},
		{`{"messages": []}`, []string{"--model", dir, "--chat", "-"}, "messages is empty"},
		{`{"messages": [1]}`, []string{"--model", dir, "--chat", "-"}, "messages[0]: want a JSON object"},
	} {
		if _, err := runTokenize(t, c.stdin, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("tokenize %v: err %v, want %q", c.args, err, c.want)
		}
	}
}
