package tokenizer

import (
	"cmp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json "added_tokens".
type addedToken struct {
	content string
	id      int32
	lstrip  bool // also swallows the whitespace before it
	rstrip  bool // also swallows the whitespace after it
	special bool
	// normalized: with a normalizer, matched in the normalized text rather than the raw text
	normalized bool
}

// addedMatcher finds added tokens in text: the leftmost occurrence, the longest token there.
type addedMatcher struct {
	tokens  []addedToken // longest first
	byFirst [256][]int32 // first byte -> indices into tokens, longest first
	first   byte         // the only first byte when singleFirst
	single  bool         // every token starts with the same byte: strings.IndexByte finds candidates
}

func newAddedMatcher(tokens []addedToken) addedMatcher {
	var m addedMatcher
	for _, t := range tokens {
		if t.content != "" {
			m.tokens = append(m.tokens, t)
		}
	}
	slices.SortStableFunc(m.tokens, func(a, b addedToken) int { return cmp.Compare(len(b.content), len(a.content)) })
	firsts := 0
	for i, t := range m.tokens {
		c := t.content[0]
		if len(m.byFirst[c]) == 0 {
			firsts++
			m.first = c
		}
		m.byFirst[c] = append(m.byFirst[c], int32(i))
	}
	m.single = firsts == 1
	return m
}

// find returns the first added token in s: the bytes [start, end) it takes (with stripped
// whitespace) and its id, or id -1 when there is none.
func (m *addedMatcher) find(s string) (start, end int, id int32) {
	if len(m.tokens) == 0 {
		return len(s), len(s), -1
	}
	for i := 0; i < len(s); i++ {
		if m.single {
			k := strings.IndexByte(s[i:], m.first)
			if k < 0 {
				break
			}
			i += k
		}
		for _, k := range m.byFirst[s[i]] {
			t := &m.tokens[k]
			if !strings.HasPrefix(s[i:], t.content) {
				continue
			}
			start, end = i, i+len(t.content)
			if t.lstrip {
				for start > 0 {
					r, w := utf8.DecodeLastRuneInString(s[:start])
					if !unicode.IsSpace(r) {
						break
					}
					start -= w
				}
			}
			if t.rstrip {
				for end < len(s) {
					r, w := utf8.DecodeRuneInString(s[end:])
					if !unicode.IsSpace(r) {
						break
					}
					end += w
				}
			}
			return start, end, t.id
		}
	}
	return len(s), len(s), -1
}
