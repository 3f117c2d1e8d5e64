package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode"
)

func TestScanPiece(t *testing.T) {
	cases := []struct {
		name string
		text string
		want []string
	}{
		{"contractions", "it's we'LL 'S 'Re 'x", []string{"it", "'s", " we", "'LL", " '", "S", " '", "Re", " '", "x"}},
		{"long s folds to s", "'ſ", []string{"'ſ"}},
		{"letter prefix", "(hello \tworld", []string{"(hello", " ", "\tworld"}},
		{"punct runs", "((x ...\n\ny", []string{"((", "x", " ...\n\n", "y"}},
		{"digits one by one", "a 123", []string{"a", " ", "1", "2", "3"}},
		{"space before digit", "a   1", []string{"a", "  ", " ", "1"}},
		{"newlines", "a  \n\n  b", []string{"a", "  \n\n", " ", " b"}},
		{"crlf", "x\r\n\r\n\ty", []string{"x", "\r\n\r\n", "\ty"}},
		{"trailing spaces", "end   ", []string{"end", "   "}},
		{"unicode spaces", "a\u3000\u2003b", []string{"a", "\u3000", "\u2003b"}},
		{"marks are other", "\u0301a", []string{"\u0301a"}},
		{"newline not a letter prefix", "\nab", []string{"\n", "ab"}},
		{"invalid byte is other", "a\xffb", []string{"a", "\xffb"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := pieces(scanSplitter{}, c.text); !slices.Equal(got, c.want) {
				t.Errorf("scan(%q) = %q, want %q", c.text, got, c.want)
			}
		})
	}
}

// TestScannerPython compares the scanner with the Python regex module's findall.
func TestScannerPython(t *testing.T) {
	bad := 0
	for _, c := range pythonCases(t) {
		if got := pieces(scanSplitter{}, c.Text); !slices.Equal(got, c.Pieces) {
			t.Errorf("scan(%q) = %q, want %q", c.Text, got, c.Pieces)
			if bad++; bad > 5 {
				t.Fatal("too many mismatches")
			}
		}
	}
}

// regexp2Comparable reports whether regexp2 must agree with the scanner on s. It does not on
// runes whose class differs between Go's Unicode tables and the Python regex module's newer
// ones, nor on ſ, which regexp2's (?i) does not fold to s.
func regexp2Comparable(s string) bool {
	for _, r := range s {
		if r == 'ſ' {
			return false
		}
		var goClass uint8
		switch {
		case unicode.IsLetter(r):
			goClass = clsLetter
		case unicode.IsNumber(r):
			goClass = clsNumber
		case unicode.IsSpace(r):
			goClass = clsSpace
		}
		if goClass != runeClass(r) {
			return false
		}
	}
	return true
}

var scanAlphabet = []string{
	"a", "b", "Z", "é", "ß", "ж", "中", "ا", "0", "7", "٣", "²", "Ⅷ",
	" ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\v", "\f", "\x85", "\xa0", "\u2003", "\u3000", "\u2028", "\x1c",
	"'", "'s", "'S", "'t", "'T", "'re", "'RE", "'rE", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'Ll", "'d", "'D", "'x", "’",
	".", ",", "(", "-", "_", "\"", ":=", "\u0301", "🚀", "€", "\x00",
}

func randomText(rng *rand.Rand, maxParts int) string {
	var b strings.Builder
	for range rng.IntN(maxParts) + 1 {
		b.WriteString(scanAlphabet[rng.IntN(len(scanAlphabet))])
	}
	return b.String()
}

// TestScannerRegexp2 compares the scanner with regexp2 running the pattern itself.
func TestScannerRegexp2(t *testing.T) {
	re, err := newRegexSplitter(scannerPattern)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 11))
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for range n {
		s := randomText(rng, 20)
		if !regexp2Comparable(s) {
			t.Fatalf("alphabet produced %q, which regexp2 cannot judge", s)
		}
		got, want := pieces(scanSplitter{}, s), pieces(re, s)
		if !slices.Equal(got, want) {
			t.Fatalf("scan(%q) = %q, regexp2 %q", s, got, want)
		}
	}
}
