package tokenizer

import (
	"slices"
	"strings"
	"testing"

	"github.com/dlclark/regexp2"
)

func TestAtomicPatternRewrite(t *testing.T) {
	cases := []struct{ in, want string }{
		{`a?+b`, `(?>a?)b`},
		{`a++`, `(?>a+)`},
		{`a*+`, `(?>a*)`},
		{`a{2,3}+`, `(?>a{2,3})`},
		{`a{2}+x`, `(?>a{2})x`},
		{`a+?b`, `a+?b`},
		{`a{,3}+`, `a{,3}+`}, // { without a leading count is a literal; + then quantifies it
		{`[^\r\n\p{L}\p{N}]?+\p{L}+`, `(?>[^\r\n\p{L}\p{N}]?)\p{L}+`},
		{`\p{L}++x`, `(?>\p{L}+)x`},
		{`\x{41}++`, `(?>\x{41}+)`},
		{`\u0041?+`, `(?>\u0041?)`},
		{`[]a]++`, `(?>[]a]+)`},
		{`[a-z-[aeiou]]++`, `(?>[a-z-[aeiou]]+)`},
		{`[\]]++`, `(?>[\]]+)`},
		{`(ab|c)++d`, `(?>(ab|c)+)d`},
		{`(?:a(b)?+)++`, `(?>(?:a(?>(b)?))+)`},
		{`(?i:[sdmt]|ll)++`, `(?>(?i:[sdmt]|ll)+)`},
		{`(?<name>x)?+`, `(?>(?<name>x)?)`},
		{`(?i)a++`, `(?i)(?>a+)`},
		{`(?=a)b++`, `(?=a)(?>b+)`},
		{`(?<!a)b++`, `(?<!a)(?>b+)`},
		{`(?#c++)a`, `(?#c++)a`},
		{`é++`, `(?>é+)`},
		{`\++`, `\++`},
		{`\+++`, `(?>\++)`},
		{`^a++$`, `^(?>a+)$`},
		{gpt2Pattern, gpt2Pattern},
		{scannerPattern, scannerPattern},
		{hubPattern, `'(?i:[sdmt]|ll|ve|re)|(?>[^\r\n\p{L}\p{N}]?)\p{L}+|\p{N}| ?(?>[^\s\p{L}\p{N}]+)[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+`},
	}
	for _, c := range cases {
		got, err := atomicPattern(c.in)
		if err != nil {
			t.Errorf("atomicPattern(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("atomicPattern(%q) = %q, want %q", c.in, got, c.want)
		}
		if _, err := regexp2.Compile(got, regexp2.None); err != nil {
			t.Errorf("regexp2 refuses %q (from %q): %v", got, c.in, err)
		}
	}
}

func TestAtomicPatternErrors(t *testing.T) {
	for _, c := range []struct{ in, msg string }{
		{`(a`, "missing )"},
		{`a)`, "unmatched )"},
		{`[ab`, "missing ]"},
		{`a\`, "trailing \\"},
		{`\p{L`, "unfinished \\p"},
		{`(?(a)b|c)`, "conditional"},
		{`(?<name`, "group name"},
		{`(?~a)`, "unknown group"},
	} {
		_, err := atomicPattern(c.in)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("atomicPattern(%q) error %v, want one containing %q", c.in, err, c.msg)
		}
	}
}

// TestPossessiveSemantics checks that the rewritten patterns match as possessive quantifiers do
// (never giving back), where that differs from greedy ones.
func TestPossessiveSemantics(t *testing.T) {
	cases := []struct {
		pattern, text string
		want          []string
	}{
		{`a++a`, "aaaa", nil},                       // greedy a+a would match
		{`a?+a`, "a", nil},                          // the optional a is never given back
		{`a?+a`, "aa", []string{"aa"}},              //
		{`"[^"]*+"`, `x "ab" "c`, []string{`"ab"`}}, //
		{`\d{2,3}+3`, "1233", []string{"1233"}},     // three digits, then 3
		{`\d{2,3}+3`, "123", nil},                   // greedy would give back the 3
		{`(ab|a)++b`, "abab", nil},                  // a+ of the group keeps both ab
		{`x*+y`, "xxy", []string{"xxy"}},
	}
	for _, c := range cases {
		sp, err := newRegexSplitter(c.pattern)
		if err != nil {
			t.Fatalf("%q: %v", c.pattern, err)
		}
		if got := pieces(sp, c.text); !slices.Equal(got, c.want) {
			t.Errorf("%q on %q = %q, want %q", c.pattern, c.text, got, c.want)
		}
	}
}

// FuzzAtomicPattern: any pattern without a possessive quantifier comes back unchanged, and
// translation never panics.
func FuzzAtomicPattern(f *testing.F) {
	for _, s := range []string{gpt2Pattern, scannerPattern, hubPattern, `(?i)a{2,}+`, `[\]]+`, `(?<n>a)\k<n>`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		out, err := atomicPattern(p)
		if err != nil {
			return
		}
		if !strings.Contains(out, "(?>") && out != p {
			t.Fatalf("atomicPattern(%q) = %q, changed without adding an atomic group", p, out)
		}
		if _, err := regexp2.Compile(p, regexp2.None); err == nil && !strings.Contains(p, "(?>") && strings.Contains(out, "(?>") {
			// regexp2 accepted the original: it had no possessive quantifier, so nothing may be wrapped.
			t.Fatalf("atomicPattern(%q) = %q wrapped a pattern regexp2 reads as having no possessive quantifier", p, out)
		}
	})
}
