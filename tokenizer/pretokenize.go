package tokenizer

import (
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// gpt2Pattern is what a ByteLevel pre-tokenizer with use_regex splits on.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// splitter finds the non-overlapping matches of a pattern in s, as byte ranges in order.
type splitter interface {
	matches(dst [][2]int, s string) [][2]int
}

// scanSplitter is the hand-written scanner for scannerPattern.
type scanSplitter struct{}

func (scanSplitter) matches(dst [][2]int, s string) [][2]int {
	for i := 0; i < len(s); {
		e := scanPiece(s, i)
		dst = append(dst, [2]int{i, e})
		i = e
	}
	return dst
}

// regexSplitter runs any other pattern with regexp2 in its default (.NET, backtracking) mode,
// which has the look-arounds that Hugging Face patterns use; possessive quantifiers become
// atomic groups (atomicPattern).
type regexSplitter struct {
	re *regexp2.Regexp
}

func newRegexSplitter(pattern string) (*regexSplitter, error) {
	translated, err := atomicPattern(pattern)
	if err != nil {
		return nil, err
	}
	re, err := regexp2.Compile(translated, regexp2.None)
	if err != nil {
		return nil, err
	}
	return &regexSplitter{re: re}, nil
}

func (r *regexSplitter) matches(dst [][2]int, s string) [][2]int {
	// regexp2 works on runes; keep the byte offset of each so invalid bytes survive.
	runes := make([]rune, 0, len(s))
	offs := make([]int, 0, len(s)+1)
	for i := 0; i < len(s); {
		c, w := utf8.DecodeRuneInString(s[i:])
		runes = append(runes, c)
		offs = append(offs, i)
		i += w
	}
	offs = append(offs, len(s))
	m, err := r.re.FindRunesMatch(runes)
	for err == nil && m != nil {
		if m.Length > 0 {
			dst = append(dst, [2]int{offs[m.Index], offs[m.Index+m.Length]})
		}
		m, err = r.re.FindNextMatch(m)
	}
	return dst
}

// stepKind says what a pre-tokenizer step does.
type stepKind uint8

const (
	stepSplit     stepKind = iota // split on a pattern
	stepByteLevel                 // optional prefix space and GPT-2 split; the byte mapping itself happens in BPE
)

type preStep struct {
	kind        stepKind
	split       splitter // stepSplit, or stepByteLevel with use_regex
	removed     bool     // stepSplit: behavior Removed (drop the matches) rather than Isolated
	prefixSpace bool     // stepByteLevel: add_prefix_space
}

// preTokenizer cuts a segment of text (between added tokens) into the words BPE sees.
type preTokenizer struct {
	fast  bool // exactly one Isolated split on scannerPattern: scanPiece does it all
	steps []preStep
}

// split appends the words of seg to dst.
func (p *preTokenizer) split(dst []string, seg string) []string {
	words := append(dst, seg)
	var spans [][2]int
	for _, st := range p.steps {
		base := len(dst)
		cur := append([]string(nil), words[base:]...)
		words = words[:base]
		for _, w := range cur {
			if st.kind == stepByteLevel {
				if st.prefixSpace && (len(w) == 0 || w[0] != ' ') {
					w = " " + w
				}
				if st.split == nil {
					words = append(words, w)
					continue
				}
			}
			spans = st.split.matches(spans[:0], w)
			prev := 0
			for _, sp := range spans {
				if sp[0] > prev {
					words = append(words, w[prev:sp[0]])
				}
				if !st.removed && sp[1] > sp[0] {
					words = append(words, w[sp[0]:sp[1]])
				}
				prev = sp[1]
			}
			if prev < len(w) {
				words = append(words, w[prev:])
			}
		}
	}
	return words
}
