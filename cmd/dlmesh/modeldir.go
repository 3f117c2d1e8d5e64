package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// resolveModelDir returns dir if given, else the bundled tiny model: ./models/llada2-tiny-go,
// then next to the executable, then in the source tree this binary was built from.
func resolveModelDir(dir string) (string, error) {
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
			return "", fmt.Errorf("model directory %q: no config.json (want a Hugging Face llada2_moe checkpoint folder)", dir)
		}
		return dir, nil
	}
	var cands []string
	cands = append(cands, defaultModelDir)
	if exe, err := os.Executable(); err == nil {
		d := filepath.Dir(exe)
		cands = append(cands, filepath.Join(d, defaultModelDir), filepath.Join(d, "..", defaultModelDir))
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		cands = append(cands, filepath.Join(filepath.Dir(file), "..", "..", defaultModelDir))
	}
	for _, c := range cands {
		if _, err := os.Stat(filepath.Join(c, "config.json")); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("bundled model not found (looked in %v); pass --model DIR", cands)
}
