package expertd

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Fingerprint identifies a checkpoint cheaply: the SHA-256 of config.json, followed by the name
// and size of every *.safetensors file and the index, in name order (no weight bytes are read).
// attnd and expertd compare it so a mesh never mixes two checkpoints. It is 16 hex digits.
func Fingerprint(dir string) (string, error) {
	h := sha256.New()
	cfg, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return "", fmt.Errorf("expertd: fingerprint: %w", err)
	}
	h.Write(cfg)
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors*"))
	if err != nil {
		return "", fmt.Errorf("expertd: fingerprint: %w", err)
	}
	sort.Strings(files)
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("expertd: fingerprint: %w", err)
		}
		fmt.Fprintf(h, "\x00%s\x00%d", filepath.Base(f), st.Size())
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}
