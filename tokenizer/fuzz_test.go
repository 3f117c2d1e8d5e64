package tokenizer

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzRoundTrip checks, for valid UTF-8 without added-token text, that Decode(Encode(s)) == s,
// that streaming the ids one by one gives the same text, and that the scanner splits s as
// regexp2 running the pattern does.
func FuzzRoundTrip(f *testing.F) {
	tok := tiny(f)
	re, err := newRegexSplitter(scannerPattern)
	if err != nil {
		f.Fatal(err)
	}
	for _, c := range fixtures(f) {
		f.Add(c.Text)
	}
	for _, s := range []string{"'S 'LL 'rE", "\t\t\n \r\n  x", "中文🚀 naïve", "a\u2003\u2003b", "1,000.5", "'ſ"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			t.Skip("invalid UTF-8 does not round-trip by design")
		}
		for _, a := range tok.added.tokens {
			if strings.Contains(s, a.content) {
				t.Skip("added-token text encodes to the added token")
			}
		}
		ids := tok.Encode(s)
		if got := tok.Decode(ids); got != s {
			t.Fatalf("Decode(Encode(%q)) = %q (ids %v)", s, got, ids)
		}
		d := tok.NewStreamDecoder()
		var b strings.Builder
		for _, id := range ids {
			b.WriteString(d.Add(id))
		}
		b.WriteString(d.Flush())
		if b.String() != s {
			t.Fatalf("stream decode of Encode(%q) = %q", s, b.String())
		}
		if regexp2Comparable(s) {
			if got, want := pieces(scanSplitter{}, s), pieces(re, s); !slices.Equal(got, want) {
				t.Fatalf("scan(%q) = %q, regexp2 %q", s, got, want)
			}
		}
	})
}
