// Package tokenizer implements Hugging Face tokenizer.json files for byte-level BPE models, such
// as the LLaDA2.x tokenizer, token for token: added tokens matched in the text, the NFC
// normalizer, a Split/ByteLevel pre-tokenizer (with a fast hand-written scanner for the LLaDA2.x
// patterns, the bundled one and the hub's, and regexp2 for any other, possessive quantifiers
// rewritten to atomic groups), BPE merges, the ByteLevel decoder and an incremental decoder for
// streaming.
//
// A Tokenizer is immutable after loading and safe for concurrent use. The gateway and the tools
// in cmd/ import this package; it imports nothing from dlmesh.
package tokenizer

//go:generate python3 gen_unicode.py

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Default names of the special tokens, used when tokenizer_config.json does not name them.
const (
	DefaultMaskToken = "<|mask|>"
	DefaultEOSToken  = "<|endoftext|>"
	DefaultBOSToken  = "<|startoftext|>"
)

// Tokenizer encodes text to token ids and back.
type Tokenizer struct {
	model *bpe
	pre   *preTokenizer
	norm  normalizer   // nil: none
	added addedMatcher // every added token; with a normalizer, those matched in the raw text
	// normAdded holds, with a normalizer, the added tokens marked "normalized", which are
	// matched in the normalized text, as tokenizers does.
	normAdded addedMatcher

	ids     map[string]int32 // vocabulary and added tokens (added win)
	tokens  []string         // id -> vocabulary token, or added content
	known   []bool           // id -> present
	special []bool           // id -> an added token marked special
	decOff  []uint32         // id -> bytes decBuf[decOff[id]:decOff[id+1]]
	decBuf  []byte

	maskID, eosID, bosID int32
	chatTemplate         string
}

// Load reads dir/tokenizer.json and, if present, dir/tokenizer_config.json.
func Load(dir string) (*Tokenizer, error) {
	tj, err := os.ReadFile(filepath.Join(dir, fileTokenizer))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: load %s: %w", dir, err)
	}
	cj, err := os.ReadFile(filepath.Join(dir, fileConfig))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("tokenizer: load %s: %w", dir, err)
		}
		cj = nil
	}
	return FromJSON(tj, cj)
}

// FromJSON builds a Tokenizer from the contents of tokenizer.json and tokenizer_config.json;
// configJSON may be nil.
func FromJSON(tokenizerJSON, configJSON []byte) (*Tokenizer, error) {
	var fj fileJSON
	if err := json.Unmarshal(tokenizerJSON, &fj); err != nil {
		return nil, malformed(fileTokenizer, "parse", err)
	}
	nz, err := parseNormalizer(fj.Normalizer)
	if err != nil {
		return nil, err
	}
	model, vocab, err := parseModel(fj.Model)
	if err != nil {
		return nil, err
	}
	pre, err := parsePre(fj.PreTokenizer)
	if err != nil {
		return nil, err
	}
	if err := checkDecoder(fj.Decoder); err != nil {
		return nil, err
	}
	t := &Tokenizer{model: model, pre: pre, norm: nz, ids: make(map[string]int32, len(vocab)+len(fj.AddedTokens))}
	size := 0
	for tok, id := range vocab {
		t.ids[tok] = id
		size = max(size, int(id)+1)
	}
	added := make([]addedToken, 0, len(fj.AddedTokens))
	for i, a := range fj.AddedTokens {
		what := fmt.Sprintf("added_tokens[%d]", i)
		id, err := checkID(a.ID, what)
		if err != nil {
			return nil, err
		}
		if a.Content == "" {
			return nil, malformed(fileTokenizer, what+": empty content", nil)
		}
		if a.SingleWord {
			return nil, unsupported(fileTokenizer, fmt.Sprintf("%s %q: single_word not supported", what, a.Content))
		}
		added = append(added, addedToken{content: a.Content, id: id, lstrip: a.LStrip, rstrip: a.RStrip, special: a.Special,
			normalized: a.Normalized == nil || *a.Normalized})
		size = max(size, int(id)+1)
	}
	t.tokens = make([]string, size)
	t.known = make([]bool, size)
	t.special = make([]bool, size)
	for tok, id := range vocab {
		t.tokens[id], t.known[id] = tok, true
	}
	raw := make([][]byte, size)
	for id, tok := range t.tokens {
		if t.known[id] {
			raw[id] = tokenBytes(tok)
		}
	}
	for _, a := range added {
		t.ids[a.content] = a.id
		if !t.known[a.id] {
			t.tokens[a.id], t.known[a.id] = a.content, true
		}
		t.special[a.id] = a.special
		raw[a.id] = []byte(a.content) // added tokens decode to their text, as in the reference
	}
	if t.norm == nil {
		t.added = newAddedMatcher(added)
	} else {
		var raw, normed []addedToken
		for _, a := range added {
			if a.normalized {
				a.content = t.norm(a.content)
				normed = append(normed, a)
			} else {
				raw = append(raw, a)
			}
		}
		t.added, t.normAdded = newAddedMatcher(raw), newAddedMatcher(normed)
	}
	t.decOff = make([]uint32, size+1)
	for id, b := range raw {
		t.decBuf = append(t.decBuf, b...)
		t.decOff[id+1] = uint32(len(t.decBuf))
	}
	if err := t.readConfig(configJSON); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tokenizer) readConfig(configJSON []byte) error {
	var cj configFileJSON
	if configJSON != nil {
		if err := json.Unmarshal(configJSON, &cj); err != nil {
			return malformed(fileConfig, "parse", err)
		}
	}
	for _, f := range []struct {
		raw   json.RawMessage
		field string
		def   string
		dst   *int32
	}{
		{cj.Mask, "mask_token", DefaultMaskToken, &t.maskID},
		{cj.EOS, "eos_token", DefaultEOSToken, &t.eosID},
		{cj.BOS, "bos_token", DefaultBOSToken, &t.bosID},
	} {
		name, ok, err := configToken(f.raw, f.field)
		if err != nil {
			return err
		}
		if !ok {
			name = f.def
		}
		*f.dst = -1
		if id, ok := t.ids[name]; ok {
			*f.dst = id
		}
	}
	tmpl, err := ChatTemplateSource(cj.ChatTemplate)
	if err != nil {
		return err
	}
	t.chatTemplate = tmpl
	return nil
}

// Encode returns the token ids of text, like tokenizers' encode(text, add_special_tokens=False):
// added tokens in the text become their ids, the rest is normalized (if tokenizer.json says so),
// pre-tokenized and merged. Invalid UTF-8 bytes are kept as bytes (each counts as a non-letter,
// non-digit, non-space character).
func (t *Tokenizer) Encode(text string) []int32 {
	ids := make([]int32, 0, len(text)/4+4)
	if t.norm == nil {
		return t.encodeSegments(ids, text, &t.added)
	}
	// As tokenizers does: added tokens that are not "normalized" are found in the raw text, the
	// text between them is normalized, and the other added tokens are found in that.
	for len(text) > 0 {
		start, end, id := t.added.find(text)
		if start > 0 {
			ids = t.encodeSegments(ids, t.norm(text[:start]), &t.normAdded)
		}
		if id < 0 {
			break
		}
		ids = append(ids, id)
		text = text[end:]
	}
	return ids
}

// encodeSegments appends the ids of text: the added tokens of m, and the words between them.
func (t *Tokenizer) encodeSegments(ids []int32, text string, m *addedMatcher) []int32 {
	var words []string
	for len(text) > 0 {
		start, end, id := m.find(text)
		if start > 0 {
			seg := text[:start]
			if t.pre.fast {
				for i := 0; i < len(seg); {
					e := scanPiece(seg, i)
					ids = t.model.encodeWord(ids, seg[i:e])
					i = e
				}
			} else {
				words = t.pre.split(words[:0], seg)
				for _, w := range words {
					ids = t.model.encodeWord(ids, w)
				}
			}
		}
		if id < 0 {
			break
		}
		ids = append(ids, id)
		text = text[end:]
	}
	return ids
}

// appendBytes appends the bytes token id stands for; unknown ids add nothing.
func (t *Tokenizer) appendBytes(dst []byte, id int32) []byte {
	if id < 0 || int(id) >= len(t.known) || !t.known[id] {
		return dst
	}
	return append(dst, t.decBuf[t.decOff[id]:t.decOff[id+1]]...)
}

// Decode returns the text of ids. Unknown ids are skipped; bytes that are not valid UTF-8 become
// U+FFFD, one per maximal invalid subsequence, as Python's errors="replace" does.
func (t *Tokenizer) Decode(ids []int32) string {
	var stack [512]byte
	buf := stack[:0]
	for _, id := range ids {
		buf = t.appendBytes(buf, id)
	}
	return lossyString(buf)
}

// VocabSize returns the highest token id plus one.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// TokenID returns the id of a vocabulary token (in its byte-level spelling) or an added token.
func (t *Tokenizer) TokenID(content string) (int32, bool) {
	id, ok := t.ids[content]
	return id, ok
}

// Token returns the token string of id as the vocabulary spells it (an added token's content
// if the vocabulary lacks id).
func (t *Tokenizer) Token(id int32) (string, bool) {
	if id < 0 || int(id) >= len(t.known) || !t.known[id] {
		return "", false
	}
	return t.tokens[id], true
}

// MaskID returns the id of tokenizer_config.json's mask_token (default "<|mask|>"), or -1.
func (t *Tokenizer) MaskID() int32 { return t.maskID }

// EOSID returns the id of tokenizer_config.json's eos_token (default "<|endoftext|>"), or -1.
func (t *Tokenizer) EOSID() int32 { return t.eosID }

// BOSID returns the id of tokenizer_config.json's bos_token (default "<|startoftext|>"), or -1.
func (t *Tokenizer) BOSID() int32 { return t.bosID }

// IsSpecial reports whether id is an added token marked special.
func (t *Tokenizer) IsSpecial(id int32) bool {
	return id >= 0 && int(id) < len(t.special) && t.special[id]
}

// ChatTemplate returns tokenizer_config.json's chat_template, or "".
func (t *Tokenizer) ChatTemplate() string { return t.chatTemplate }
