package tokenizer

import "unicode/utf8"

// byteRunes maps each byte to the printable rune that stands for it in a byte-level BPE vocabulary
// (the GPT-2 convention): bytes that are printable Latin-1 stand for themselves, the other 68 are
// moved, in order, to U+0100 and up.
var byteRunes = func() (m [256]rune) {
	next := rune(0x100)
	for b := 0; b < 256; b++ {
		switch {
		case b >= '!' && b <= '~', b >= 0xA1 && b <= 0xAC, b >= 0xAE && b <= 0xFF:
			m[b] = rune(b)
		default:
			m[b] = next
			next++
		}
	}
	return m
}()

// runeBytes is the inverse of byteRunes.
var runeBytes = func() map[rune]byte {
	m := make(map[rune]byte, 256)
	for b, r := range byteRunes {
		m[r] = byte(b)
	}
	return m
}()

// byteLevelString spells raw bytes in byte-level runes, the form vocabulary keys take.
func byteLevelString(raw string) string {
	out := make([]rune, len(raw))
	for i := 0; i < len(raw); i++ {
		out[i] = byteRunes[raw[i]]
	}
	return string(out)
}

// tokenBytes turns a vocabulary token back into the bytes it stands for. Like the Hugging Face
// ByteLevel decoder, a token with any rune outside the byte alphabet is taken as its UTF-8 text.
func tokenBytes(tok string) []byte {
	out := make([]byte, 0, len(tok))
	for _, r := range tok {
		b, ok := runeBytes[r]
		if !ok {
			return []byte(tok)
		}
		out = append(out, b)
	}
	return out
}

// seqInfo returns the length of the UTF-8 sequence that byte c starts (1 for ASCII, 0 when c
// cannot start one) and the allowed range of its second byte.
func seqInfo(c byte) (n int, lo, hi byte) {
	switch {
	case c < 0x80:
		return 1, 0, 0
	case c < 0xC2:
		return 0, 0, 0
	case c < 0xE0:
		return 2, 0x80, 0xBF
	case c == 0xE0:
		return 3, 0xA0, 0xBF
	case c == 0xED:
		return 3, 0x80, 0x9F
	case c < 0xF0:
		return 3, 0x80, 0xBF
	case c == 0xF0:
		return 4, 0x90, 0xBF
	case c < 0xF4:
		return 4, 0x80, 0xBF
	case c == 0xF4:
		return 4, 0x80, 0x8F
	}
	return 0, 0, 0
}

// prefixLen returns k, the number of bytes at the start of b (len(b) > 0) that form a valid
// prefix of one UTF-8 sequence (at least 1), and n, the length that sequence needs (0 if b[0]
// cannot start one). k == n means a complete rune.
func prefixLen(b []byte) (k, n int) {
	n, lo, hi := seqInfo(b[0])
	if n <= 1 {
		return 1, n
	}
	k = 1
	if len(b) > 1 && b[1] >= lo && b[1] <= hi {
		k = 2
		for k < n && k < len(b) && b[k] >= 0x80 && b[k] <= 0xBF {
			k++
		}
	}
	return k, n
}

// lossyString converts b to a string, replacing each maximal invalid subpart with one U+FFFD,
// which is what Python's bytes.decode("utf-8", errors="replace") and Rust's from_utf8_lossy do.
func lossyString(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			out = append(out, b[i])
			i++
			continue
		}
		k, n := prefixLen(b[i:])
		if k == n {
			out = append(out, b[i:i+k]...)
		} else {
			out = utf8.AppendRune(out, utf8.RuneError)
		}
		i += k
	}
	return string(out)
}

// completePrefix returns how much of b can be decoded now: all of it unless b ends in the valid
// beginning of a multi-byte rune whose remaining bytes may still come.
func completePrefix(b []byte) int {
	for p := len(b) - 1; p >= 0 && p >= len(b)-3; p-- {
		if c := b[p]; c >= 0x80 && c < 0xC0 {
			continue
		}
		if k, n := prefixLen(b[p:]); n > 1 && k == len(b)-p && k < n {
			return p
		}
		break
	}
	return len(b)
}
