package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/dlclark/regexp2"
)

// The parts of tokenizer.json this package reads. Unknown fields are ignored.
type fileJSON struct {
	AddedTokens  []addedJSON     `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Model        *modelJSON      `json:"model"`
	Decoder      json.RawMessage `json:"decoder"`
}

type addedJSON struct {
	ID         int64  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Special    bool   `json:"special"`
	Normalized *bool  `json:"normalized"`
}

type modelJSON struct {
	Type                    string            `json:"type"`
	Vocab                   map[string]int64  `json:"vocab"`
	Merges                  []json.RawMessage `json:"merges"`
	UnkToken                *string           `json:"unk_token"`
	ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
	FuseUnk                 bool              `json:"fuse_unk"`
	ByteFallback            bool              `json:"byte_fallback"`
	IgnoreMerges            bool              `json:"ignore_merges"`
	Dropout                 *float64          `json:"dropout"`
}

type preJSON struct {
	Type          string            `json:"type"`
	Pretokenizers []json.RawMessage `json:"pretokenizers"`
	Pattern       *struct {
		Regex  *string `json:"Regex"`
		String *string `json:"String"`
	} `json:"pattern"`
	Behavior       string `json:"behavior"`
	Invert         bool   `json:"invert"`
	AddPrefixSpace *bool  `json:"add_prefix_space"`
	UseRegex       *bool  `json:"use_regex"`
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// checkID validates an id from the file.
func checkID(id int64, what string) (int32, error) {
	if id < 0 || id > math.MaxInt32-1 {
		return 0, malformed(fileTokenizer, fmt.Sprintf("%s: id %d out of range", what, id), nil)
	}
	return int32(id), nil
}

// parseModel builds the BPE model and returns it with the vocabulary's id -> token table.
func parseModel(mj *modelJSON) (*bpe, map[string]int32, error) {
	if mj == nil {
		return nil, nil, malformed(fileTokenizer, "no model", nil)
	}
	switch {
	case mj.Type != "BPE" && mj.Type != "":
		return nil, nil, unsupported(fileTokenizer, fmt.Sprintf("model.type %q not supported", mj.Type))
	case mj.Type == "" && mj.Merges == nil:
		return nil, nil, unsupported(fileTokenizer, "model without type or merges not supported")
	case mj.ContinuingSubwordPrefix != nil && *mj.ContinuingSubwordPrefix != "":
		return nil, nil, unsupported(fileTokenizer, "model.continuing_subword_prefix not supported")
	case mj.EndOfWordSuffix != nil && *mj.EndOfWordSuffix != "":
		return nil, nil, unsupported(fileTokenizer, "model.end_of_word_suffix not supported")
	case mj.ByteFallback:
		return nil, nil, unsupported(fileTokenizer, "model.byte_fallback not supported")
	case mj.Dropout != nil && *mj.Dropout != 0:
		return nil, nil, unsupported(fileTokenizer, "model.dropout not supported")
	case len(mj.Vocab) == 0:
		return nil, nil, malformed(fileTokenizer, "model.vocab is empty", nil)
	}
	m := &bpe{
		vocab:        make(map[string]int32, len(mj.Vocab)),
		merges:       make(map[uint64]merge, len(mj.Merges)),
		unk:          -1,
		fuseUnk:      mj.FuseUnk,
		ignoreMerges: mj.IgnoreMerges,
		cache:        newWordCache(defaultShardWords),
	}
	seen := make(map[int32]string, len(mj.Vocab))
	for tok, id64 := range mj.Vocab {
		id, err := checkID(id64, fmt.Sprintf("model.vocab[%q]", tok))
		if err != nil {
			return nil, nil, err
		}
		if other, dup := seen[id]; dup {
			a, b := min(tok, other), max(tok, other)
			return nil, nil, malformed(fileTokenizer, fmt.Sprintf("model.vocab: %q and %q share id %d", a, b, id), nil)
		}
		seen[id] = tok
		m.vocab[tok] = id
	}
	for b := range 256 {
		m.byteIDs[b] = -1
		if id, ok := m.vocab[string(byteRunes[b])]; ok {
			m.byteIDs[b] = id
		}
	}
	if mj.UnkToken != nil {
		id, ok := m.vocab[*mj.UnkToken]
		if !ok {
			return nil, nil, malformed(fileTokenizer, fmt.Sprintf("model.unk_token %q not in vocab", *mj.UnkToken), nil)
		}
		m.unk = id
	}
	for i, raw := range mj.Merges {
		a, b, err := parseMerge(raw)
		if err != nil {
			return nil, nil, malformed(fileTokenizer, fmt.Sprintf("model.merges[%d]", i), err)
		}
		ia, oka := m.vocab[a]
		ib, okb := m.vocab[b]
		ic, okc := m.vocab[a+b]
		if !oka || !okb || !okc {
			return nil, nil, malformed(fileTokenizer, fmt.Sprintf("model.merges[%d] %q %q: token not in vocab", i, a, b), nil)
		}
		m.merges[pairKey(ia, ib)] = merge{rank: int32(i), id: ic} // a repeated pair keeps its last rank, as in tokenizers
	}
	return m, m.vocab, nil
}

// parseMerge reads one merge, "a b" or ["a", "b"].
func parseMerge(raw json.RawMessage) (string, string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		parts := strings.Split(s, " ")
		if len(parts) != 2 {
			return "", "", fmt.Errorf("%q is not two tokens separated by one space", s)
		}
		return parts[0], parts[1], nil
	}
	var pair []string
	if err := json.Unmarshal(raw, &pair); err != nil {
		return "", "", fmt.Errorf("want a string or a pair of strings, got %s", truncate(string(raw)))
	}
	if len(pair) != 2 {
		return "", "", fmt.Errorf("want a pair, got %d strings", len(pair))
	}
	return pair[0], pair[1], nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// parsePre builds the pre-tokenizer. A byte-level BPE needs a ByteLevel step somewhere.
func parsePre(raw json.RawMessage) (*preTokenizer, error) {
	if isNull(raw) {
		return nil, unsupported(fileTokenizer, "pre_tokenizer null not supported (only byte-level BPE)")
	}
	p := &preTokenizer{}
	hasByteLevel := false
	var add func(raw json.RawMessage, path string) error
	add = func(raw json.RawMessage, path string) error {
		var pj preJSON
		if err := json.Unmarshal(raw, &pj); err != nil {
			return malformed(fileTokenizer, path, err)
		}
		switch pj.Type {
		case "Sequence":
			for i, sub := range pj.Pretokenizers {
				if err := add(sub, fmt.Sprintf("%s.pretokenizers[%d]", path, i)); err != nil {
					return err
				}
			}
			return nil
		case "ByteLevel":
			hasByteLevel = true
			st := preStep{kind: stepByteLevel, prefixSpace: pj.AddPrefixSpace == nil || *pj.AddPrefixSpace}
			if pj.UseRegex == nil || *pj.UseRegex {
				sp, err := newRegexSplitter(gpt2Pattern)
				if err != nil {
					return malformed(fileTokenizer, path, err)
				}
				st.split = sp
			}
			if st.prefixSpace || st.split != nil {
				p.steps = append(p.steps, st)
			}
			return nil
		case "Split":
			st := preStep{kind: stepSplit}
			switch pj.Behavior {
			case "Isolated":
			case "Removed":
				st.removed = true
			default:
				return unsupported(fileTokenizer, fmt.Sprintf("%s.behavior %q not supported", path, pj.Behavior))
			}
			if pj.Invert {
				return unsupported(fileTokenizer, path+".invert true not supported")
			}
			var pattern string
			switch {
			case pj.Pattern != nil && pj.Pattern.Regex != nil:
				pattern = *pj.Pattern.Regex
			case pj.Pattern != nil && pj.Pattern.String != nil:
				pattern = regexp2.Escape(*pj.Pattern.String)
			default:
				return malformed(fileTokenizer, path+".pattern: want Regex or String", nil)
			}
			if scans(pattern) {
				st.split = scanSplitter{}
			} else {
				sp, err := newRegexSplitter(pattern)
				if err != nil {
					return malformed(fileTokenizer, fmt.Sprintf("%s.pattern %q", path, pattern), err)
				}
				st.split = sp
			}
			p.steps = append(p.steps, st)
			return nil
		case "":
			return malformed(fileTokenizer, path+": no type", nil)
		}
		return unsupported(fileTokenizer, fmt.Sprintf("%s.type %q not supported", path, pj.Type))
	}
	if err := add(raw, "pre_tokenizer"); err != nil {
		return nil, err
	}
	if !hasByteLevel {
		return nil, unsupported(fileTokenizer, "pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)")
	}
	if len(p.steps) == 1 && p.steps[0].kind == stepSplit && !p.steps[0].removed {
		_, p.fast = p.steps[0].split.(scanSplitter)
	}
	return p, nil
}

// checkDecoder accepts the ByteLevel decoder, alone or as the only step of a Sequence.
func checkDecoder(raw json.RawMessage) error {
	if isNull(raw) {
		return unsupported(fileTokenizer, "decoder null not supported (want ByteLevel)")
	}
	var d struct {
		Type     string            `json:"type"`
		Decoders []json.RawMessage `json:"decoders"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return malformed(fileTokenizer, "decoder", err)
	}
	if d.Type == "Sequence" && len(d.Decoders) == 1 {
		return checkDecoder(d.Decoders[0])
	}
	if d.Type != "ByteLevel" {
		return unsupported(fileTokenizer, fmt.Sprintf("decoder.type %q not supported", d.Type))
	}
	return nil
}

// configFileJSON is the part of tokenizer_config.json this package reads.
type configFileJSON struct {
	BOS          json.RawMessage `json:"bos_token"`
	EOS          json.RawMessage `json:"eos_token"`
	Mask         json.RawMessage `json:"mask_token"`
	ChatTemplate json.RawMessage `json:"chat_template"`
}

// configToken reads a special-token field: a string or an AddedToken object with "content".
func configToken(raw json.RawMessage, field string) (string, bool, error) {
	if isNull(raw) {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true, nil
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Content == nil {
		return "", false, malformed(fileConfig, field+": want a string or an object with content", err)
	}
	return *obj.Content, true, nil
}

// ChatTemplateSource reads tokenizer_config.json's "chat_template" value: a string, or a list
// of {name, template} (the "default" one); "" when absent or null.
func ChatTemplateSource(raw json.RawMessage) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var list []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return "", malformed(fileConfig, "chat_template: want a string or a list of {name, template}", err)
	}
	for _, t := range list {
		if t.Name == "default" {
			return t.Template, nil
		}
	}
	return "", nil
}
