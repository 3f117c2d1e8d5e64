package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// splitRuneIDs returns ids of the fixtures whose bytes are not whole runes: the tokens that
// make the stream decoder buffer.
func splitRuneIDs(tb testing.TB, tok *Tokenizer, ids []int32) int {
	tb.Helper()
	n := 0
	for _, id := range ids {
		if !utf8.Valid(tok.appendBytes(nil, id)) {
			n++
		}
	}
	return n
}

func TestStreamDecoder(t *testing.T) {
	tok := tiny(t)
	cases := []struct {
		name string
		text string
	}{
		{"go", "package main\n\nfunc main() {}\n"},
		{"cjk", "中文字符，编码测试：日本語のテキスト"},
		{"emoji", "emoji 🚀🔥👍🏽 and 🇫🇷 flags"},
		{"mixed", "unicode: héllo wörld — naïve café; 中文字符; emoji 🚀🔥; math ∑∫√"},
		{"specials", "<|startoftext|>中<|mask|>🚀<|endoftext|>"},
	}
	for _, c := range fixtures(t) {
		cases = append(cases, struct{ name, text string }{caseName(len(cases), c.Text), c.Text})
	}
	split := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ids := tok.Encode(c.text)
			split += splitRuneIDs(t, tok, ids)
			want := tok.Decode(ids)
			if want != c.text {
				t.Fatalf("Decode(Encode(%q)) = %q", c.text, want)
			}
			d := tok.NewStreamDecoder()
			var b strings.Builder
			for _, id := range ids {
				out := d.Add(id)
				if !utf8.ValidString(out) || strings.ContainsRune(out, utf8.RuneError) {
					t.Fatalf("Add(%d) = %q: emitted part of a rune", id, out)
				}
				b.WriteString(out)
			}
			if rest := d.Flush(); rest != "" {
				t.Errorf("Flush() = %q after complete text", rest)
			}
			if b.String() != want {
				t.Errorf("streamed %q, want %q", b.String(), want)
			}
			// All at once, then again to check the decoder resets.
			if got := d.Add(ids...) + d.Flush(); got != want {
				t.Errorf("Add(all) = %q, want %q", got, want)
			}
		})
	}
	if split == 0 {
		t.Fatal("no token split a rune: the test does not exercise buffering")
	}
}

// TestStreamDecoderInvalid feeds byte tokens that form broken UTF-8.
func TestStreamDecoderInvalid(t *testing.T) {
	tok := tiny(t)
	ids := func(s string) []int32 {
		var out []int32
		for i := 0; i < len(s); i++ {
			out = append(out, tok.model.byteIDs[s[i]])
		}
		return out
	}
	cases := []struct {
		name  string
		bytes string
		adds  []string // output of Add for each byte
		flush string
	}{
		{"complete rune", "\xe4\xb8\xad", []string{"", "", "中"}, ""},
		{"truncated at end", "a\xe4\xb8", []string{"a", "", ""}, "\ufffd"},
		{"truncated then ascii", "\xe4\xb8b", []string{"", "", "\ufffdb"}, ""},
		{"stray continuation", "\x80a", []string{"\ufffd", "a"}, ""},
		{"bad second byte", "\xe0\x80", []string{"", "\ufffd\ufffd"}, ""},
		{"invalid lead", "\xff\xf0\x9f\x9a\x80", []string{"\ufffd", "", "", "", "🚀"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := tok.NewStreamDecoder()
			all := ""
			for i, id := range ids(c.bytes) {
				got := d.Add(id)
				if got != c.adds[i] {
					t.Errorf("Add(byte %d = %#x) = %q, want %q", i, c.bytes[i], got, c.adds[i])
				}
				all += got
			}
			flush := d.Flush()
			if flush != c.flush {
				t.Errorf("Flush() = %q, want %q", flush, c.flush)
			}
			if want := tok.Decode(ids(c.bytes)); all+flush != want {
				t.Errorf("stream gave %q, Decode %q", all+flush, want)
			}
		})
	}
}
