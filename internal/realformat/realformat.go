// Package realformat gives tests a model directory in the real LLaDA2.x file formats without the
// real checkpoint: the bundled llada2-tiny-go weights with the tokenizer files of
// testdata/llada2-real-format (the same vocabulary and merges under the hub's Split regex, and
// the hub's chat template).
package realformat

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Root returns the repository root, found from this file's path.
func Root(tb testing.TB) string {
	tb.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		tb.Fatal("realformat: cannot find the repository root")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// FixturesDir is testdata/llada2-real-format.
func FixturesDir(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(Root(tb), "testdata", "llada2-real-format")
}

// TokenizerDir is the directory holding the real-format tokenizer.json and tokenizer_config.json.
func TokenizerDir(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(FixturesDir(tb), "tokenizer")
}

// ModelDir builds, in a temporary directory removed after the test, a model directory: every file
// of models/llada2-tiny-go, linked, except the tokenizer files, which come from TokenizerDir.
func ModelDir(tb testing.TB) string {
	tb.Helper()
	tiny := filepath.Join(Root(tb), "models", "llada2-tiny-go")
	entries, err := os.ReadDir(tiny)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	link := func(src, name string) {
		if err := os.Symlink(src, filepath.Join(dir, name)); err != nil {
			tb.Fatal(err)
		}
	}
	for _, e := range entries {
		switch e.Name() {
		case "tokenizer.json", "tokenizer_config.json":
			continue
		}
		link(filepath.Join(tiny, e.Name()), e.Name())
	}
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json"} {
		link(filepath.Join(TokenizerDir(tb), name), name)
	}
	return dir
}
