package realformat

import (
	"os"
	"path/filepath"
	"testing"
)

func TestModelDir(t *testing.T) {
	dir := ModelDir(t)
	for _, name := range []string{"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	got, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(TokenizerDir(t), "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Error("tokenizer_config.json is not the real-format one")
	}
	for _, name := range []string{"tokenizer_cases.json", "chat_cases.json", "config.mini.json"} {
		if _, err := os.Stat(filepath.Join(FixturesDir(t), name)); err != nil {
			t.Errorf("fixture %s: %v", name, err)
		}
	}
}
