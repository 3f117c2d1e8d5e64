package model

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Fingerprint identifies the checkpoint in dir cheaply: the SHA-256 of config.json, followed by
// the name and size of every *.safetensors file and the index, in name order (no weight bytes are
// read), cut to 16 hex digits. It is the one checkpoint identity of the mesh: `dlmesh inspect`
// prints it, attnd and expertd report it in their Info, attnd refuses expertd replicas with
// another one, and the Consul registry keeps only instances carrying it, so a mesh never mixes two
// checkpoints.
func Fingerprint(dir string) (string, error) {
	h := sha256.New()
	cfg, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return "", fmt.Errorf("model: fingerprint: %w", err)
	}
	h.Write(cfg)
	files, err := filepath.Glob(filepath.Join(dir, "*.safetensors*"))
	if err != nil {
		return "", fmt.Errorf("model: fingerprint: %w", err)
	}
	sort.Strings(files)
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("model: fingerprint: %w", err)
		}
		fmt.Fprintf(h, "\x00%s\x00%d", filepath.Base(f), st.Size())
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}
