package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// scannerPattern is the Split regex of the bundled LLaDA2.x (Ling 2.0) tokenizer. Pieces for it
// come from scanPiece, a hand-written equivalent; any other pattern goes to regexp2.
const scannerPattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// hubPattern is the Split regex of the LLaDA2.x tokenizer.json on the hub, with possessive
// quantifiers. It matches exactly what scannerPattern matches, alternative by alternative:
//   - '(?i:[sdmt]|ll|ve|re) is the same set of contractions; no alternative is a prefix of
//     another, so their order does not matter;
//   - [^\r\n\p{L}\p{N}]?+\p{L}+: the optional rune is never a letter, so giving it back (what
//     ?+ forbids) could never let \p{L}+ match where it did not;
//   - [^\s\p{L}\p{N}]++[\r\n]*: the run holds no \r or \n, so giving back part of it could
//     never help [\r\n]*, which cannot fail anyway;
//   - \s*[\r\n] ends, like \s*[\r\n]+, just after the last \r or \n of the whitespace run
//     (greedy \s* backs off to it, and [\r\n]+ cannot go further: what follows that rune is
//     not \r or \n).
//
// TestScannerHubRegexp2 and FuzzRoundTrip check this against regexp2 running the pattern
// through atomicPattern.
const hubPattern = `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+`

// scans reports whether scanPiece implements pattern.
func scans(pattern string) bool { return pattern == scannerPattern || pattern == hubPattern }

// Character classes of the pattern. A rune with none of them ("other") is what
// [^\s\p{L}\p{N}] matches. Invalid UTF-8 bytes count as other.
const (
	clsLetter  uint8 = 1 << iota // \p{L}
	clsNumber                    // \p{N}
	clsSpace                     // \s
	clsNewline                   // \r or \n (always with clsSpace)
)

var asciiClass = func() (t [utf8.RuneSelf]uint8) {
	for c := 0; c < utf8.RuneSelf; c++ {
		t[c] = runeClass(rune(c))
	}
	t['\r'] |= clsNewline
	t['\n'] |= clsNewline
	return t
}()

// runeClass classifies r with the tables of the Python regex module (unicode_tables.go).
func runeClass(r rune) uint8 {
	switch {
	case unicode.Is(letterTable, r):
		return clsLetter
	case unicode.Is(numberTable, r):
		return clsNumber
	case unicode.Is(spaceTable, r):
		return clsSpace
	}
	return 0
}

// classAt returns the class and byte width of the rune at s[i].
func classAt(s string, i int) (uint8, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && w == 1 {
		return 0, 1
	}
	return runeClass(r), w
}

// scanPiece returns the end of the leftmost-first match of scannerPattern that starts at s[i]
// (i < len(s)). The pattern matches at every position, so pieces tile the text.
// The alternatives are tried in the order of the pattern, as a backtracking engine does.
func scanPiece(s string, i int) int {
	n := len(s)
	c0, w0 := classAt(s, i)
	j := i + w0

	// (?i:'s|'t|'re|'ve|'m|'ll|'d), with simple case folding (so ſ matches s).
	if s[i] == '\'' && j < n {
		if e := contraction(s, j); e > 0 {
			return e
		}
	}

	// [^\r\n\p{L}\p{N}]?\p{L}+
	if c0&clsLetter != 0 {
		return scanLetters(s, j)
	}
	if c0&(clsNumber|clsNewline) == 0 && j < n {
		if c1, w1 := classAt(s, j); c1&clsLetter != 0 {
			return scanLetters(s, j+w1)
		}
	}

	// \p{N}
	if c0&clsNumber != 0 {
		return j
	}

	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	if c0 == 0 {
		return scanOther(s, j)
	}
	if s[i] == ' ' && j < n {
		if c1, w1 := classAt(s, j); c1 == 0 {
			return scanOther(s, j+w1)
		}
	}

	// From here s[i] is whitespace; find the whitespace run [i, e).
	lastNL, last, e := -1, i, j
	if c0&clsNewline != 0 {
		lastNL = i
	}
	for e < n {
		c, w := classAt(s, e)
		if c&clsSpace == 0 {
			break
		}
		if c&clsNewline != 0 {
			lastNL = e
		}
		last = e
		e += w
	}
	// \s*[\r\n]+ : backtracking stops \s* just before the run's last CR or LF.
	if lastNL >= 0 {
		return lastNL + 1
	}
	// \s+(?!\S) : the whole run at the end of text, else all but the run's last rune;
	// \s+ : a single whitespace rune before non-whitespace.
	if e == n || last == i {
		return e
	}
	return last
}

// contraction matches s, t, re, ve, m, ll, d case-insensitively at s[j]; it returns the end or 0.
func contraction(s string, j int) int {
	n := len(s)
	switch s[j] | 0x20 {
	case 's', 't', 'm', 'd':
		return j + 1
	case 'r', 'v':
		if j+1 < n && s[j+1]|0x20 == 'e' {
			return j + 2
		}
	case 'l':
		if j+1 < n && s[j+1]|0x20 == 'l' {
			return j + 2
		}
	case 0xC5 | 0x20: // U+017F LATIN SMALL LETTER LONG S is C5 BF; it folds to s.
		if s[j] == 0xC5 && j+1 < n && s[j+1] == 0xBF {
			return j + 2
		}
	}
	return 0
}

// scanLetters returns the end of the run of letters starting at s[j].
func scanLetters(s string, j int) int {
	for j < len(s) {
		if b := s[j]; b < utf8.RuneSelf {
			if asciiClass[b]&clsLetter == 0 {
				break
			}
			j++
			continue
		}
		c, w := classAt(s, j)
		if c&clsLetter == 0 {
			break
		}
		j += w
	}
	return j
}

// scanOther returns the end of [^\s\p{L}\p{N}]*[\r\n]* starting at s[j].
func scanOther(s string, j int) int {
	for j < len(s) {
		if b := s[j]; b < utf8.RuneSelf {
			if asciiClass[b] != 0 {
				break
			}
			j++
			continue
		}
		c, w := classAt(s, j)
		if c != 0 {
			break
		}
		j += w
	}
	for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
		j++
	}
	return j
}
