package tokenizer

import (
	"encoding/json"
	"fmt"

	"golang.org/x/text/unicode/norm"
)

// normalizer is what tokenizer.json "normalizer" does to the text between added tokens.
type normalizer func(string) string

// parseNormalizer accepts null, NFC, and a Sequence of those; it returns nil for no change.
func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	nfc := false
	var add func(raw json.RawMessage, path string) error
	add = func(raw json.RawMessage, path string) error {
		var nj struct {
			Type        string            `json:"type"`
			Normalizers []json.RawMessage `json:"normalizers"`
		}
		if err := json.Unmarshal(raw, &nj); err != nil {
			return malformed(fileTokenizer, path, err)
		}
		switch nj.Type {
		case "NFC":
			nfc = true
			return nil
		case "Sequence":
			for i, sub := range nj.Normalizers {
				if err := add(sub, fmt.Sprintf("%s.normalizers[%d]", path, i)); err != nil {
					return err
				}
			}
			return nil
		case "":
			return malformed(fileTokenizer, path+": no type", nil)
		}
		return unsupported(fileTokenizer, fmt.Sprintf("%s.type %q not supported (only NFC)", path, nj.Type))
	}
	if err := add(raw, "normalizer"); err != nil {
		return nil, err
	}
	if !nfc {
		return nil, nil
	}
	return norm.NFC.String, nil // NFC is idempotent: NFC twice in a Sequence is NFC
}
