package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFingerprint(t *testing.T) {
	fp, err := Fingerprint(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(fp) != 16 || strings.Trim(fp, "0123456789abcdef") != "" {
		t.Fatalf("Fingerprint %q is not 16 hex characters", fp)
	}
	if again, _ := Fingerprint(tinyModelDir); again != fp {
		t.Errorf("fingerprint not stable: %s then %s", fp, again)
	}

	write := func(tb testing.TB, dir, name, body string) {
		tb.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	base := t.TempDir()
	write(t, base, "config.json", `{"model_type":"llada2_moe"}`)
	write(t, base, "model.safetensors", "0123456789")
	want, err := Fingerprint(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		config string
		shard  string
		same   bool
	}{
		{"same files", `{"model_type":"llada2_moe"}`, "9876543210", true},
		{"config changed", `{"model_type":"llada2_moe","x":1}`, "0123456789", false},
		{"shard size changed", `{"model_type":"llada2_moe"}`, "01234567890", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "config.json", tc.config)
			write(t, dir, "model.safetensors", tc.shard)
			got, err := Fingerprint(dir)
			if err != nil {
				t.Fatal(err)
			}
			if (got == want) != tc.same {
				t.Errorf("fingerprint %s vs %s: same=%v, want %v", got, want, got == want, tc.same)
			}
		})
	}
	if _, err := Fingerprint(t.TempDir()); err == nil || !strings.Contains(err.Error(), "config.json") {
		t.Errorf("dir without config.json: err %v, want one naming config.json", err)
	}
}
