package tokenizer

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// realDir holds the real-format tokenizer files: the bundled vocabulary and merges under the
// hub's Split regex (hubPattern) and the hub's tokenizer_config.json.
const (
	realDir       = "../testdata/llada2-real-format/tokenizer"
	realCasesPath = "../testdata/llada2-real-format/tokenizer_cases.json"
)

func realTok(tb testing.TB) *Tokenizer {
	tb.Helper()
	tok, err := Load(realDir)
	if err != nil {
		tb.Fatalf("Load(%s): %v", realDir, err)
	}
	return tok
}

func realJSON(tb testing.TB) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(realDir, fileTokenizer))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestRealFormatFixtures checks tokenizer_cases.json, made by the reference tokenizer.
func TestRealFormatFixtures(t *testing.T) {
	tok := realTok(t)
	if !tok.pre.fast {
		t.Error("the hub pattern does not take the scanner's fast path")
	}
	var f struct {
		Cases []fixtureCase `json:"cases"`
	}
	readJSON(t, realCasesPath, &f)
	if len(f.Cases) == 0 {
		t.Fatal("no cases")
	}
	pass := 0
	for i, c := range f.Cases {
		t.Run(caseName(i, c.Text), func(t *testing.T) {
			ok := true
			if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
				t.Errorf("Encode(%q)\n got %v\nwant %v", c.Text, got, c.IDs)
				ok = false
			}
			if got := tok.Decode(c.IDs); got != c.Decoded {
				t.Errorf("Decode(%v) = %q, want %q", c.IDs, got, c.Decoded)
				ok = false
			}
			if ok {
				pass++
			}
		})
	}
	t.Logf("real-format tokenizer cases: %d/%d", pass, len(f.Cases))
}

// TestRealFormatRegexp2Path runs the real-format fixtures and the Python cases through regexp2
// running the hub pattern (possessive quantifiers as atomic groups) instead of the scanner.
func TestRealFormatRegexp2Path(t *testing.T) {
	tok := realTok(t)
	sp, err := newRegexSplitter(hubPattern)
	if err != nil {
		t.Fatal(err)
	}
	tok.pre.fast = false
	tok.pre.steps[0].split = sp
	tok.model.cache = newWordCache(0)
	var f struct {
		Cases []fixtureCase `json:"cases"`
	}
	readJSON(t, realCasesPath, &f)
	for _, c := range f.Cases {
		if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
			t.Errorf("regexp2 Encode(%q)\n got %v\nwant %v", c.Text, got, c.IDs)
		}
	}
	for _, c := range pythonCases(t) {
		if !regexp2Comparable(c.Text) {
			continue
		}
		if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
			t.Fatalf("regexp2 Encode(%q)\n got %v\nwant %v", c.Text, got, c.IDs)
		}
	}
}

// TestRealFormatMatchesBundled: the bundled and the hub pattern split alike, so the two
// tokenizers (same vocabulary and merges) agree on every Python case and fixture.
func TestRealFormatMatchesBundled(t *testing.T) {
	real, bundled := realTok(t), tiny(t)
	for _, c := range pythonCases(t) {
		if got, want := real.Encode(c.Text), bundled.Encode(c.Text); !slices.Equal(got, want) {
			t.Fatalf("Encode(%q): real format %v, bundled %v", c.Text, got, want)
		}
	}
	for _, c := range fixtures(t) {
		if got := real.Encode(c.Text); !slices.Equal(got, c.IDs) {
			t.Fatalf("Encode(%q): real format %v, bundled fixture %v", c.Text, got, c.IDs)
		}
	}
}

// TestScannerHubRegexp2 compares the scanner with regexp2 running the hub pattern.
func TestScannerHubRegexp2(t *testing.T) {
	re, err := newRegexSplitter(hubPattern)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 5))
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for range n {
		s := randomText(rng, 20)
		got, want := pieces(scanSplitter{}, s), pieces(re, s)
		if !slices.Equal(got, want) {
			t.Fatalf("scan(%q) = %q, regexp2 on the hub pattern %q", s, got, want)
		}
	}
}

// nfcJSON is the real-format tokenizer.json with the given normalizer.
func nfcJSON(tb testing.TB, normalizer any) []byte {
	tb.Helper()
	nz, err := json.Marshal(normalizer)
	if err != nil {
		tb.Fatal(err)
	}
	src := realJSON(tb)
	const null = `"normalizer": null`
	if !bytes.Contains(src, []byte(null)) {
		tb.Fatalf("%s has no %s", realDir, null)
	}
	return bytes.Replace(src, []byte(null), append([]byte(`"normalizer": `), nz...), 1)
}

func TestNFCNormalizer(t *testing.T) {
	plain := realTok(t)
	for name, nz := range map[string]any{
		"NFC":      map[string]any{"type": "NFC"},
		"sequence": map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "NFC"}}},
	} {
		t.Run(name, func(t *testing.T) {
			tok, err := FromJSON(nfcJSON(t, nz), nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct{ in, nfc string }{
				{"cafe\u0301 na\u0131\u0308ve", "café na\u0131\u0308ve"},
				{"e\u0301<role>A\u030a", "é<role>Å"},
				{"\u212b ohm \u2126", "Å ohm Ω"},
				{"plain ascii", "plain ascii"},
			} {
				got, want := tok.Encode(c.in), plain.Encode(c.nfc)
				if !slices.Equal(got, want) {
					t.Errorf("NFC Encode(%q) = %v, want Encode(%q) = %v", c.in, got, c.nfc, want)
				}
				if d := tok.Decode(got); d != c.nfc {
					t.Errorf("Decode(Encode(%q)) = %q, want %q", c.in, d, c.nfc)
				}
			}
			if got := plain.Encode("cafe\u0301"); slices.Equal(got, plain.Encode("café")) {
				t.Error("without a normalizer, the decomposed text should encode differently")
			}
		})
	}
	t.Run("normalized added token", func(t *testing.T) {
		var m map[string]any
		if err := json.Unmarshal(nfcJSON(t, map[string]any{"type": "NFC"}), &m); err != nil {
			t.Fatal(err)
		}
		// A non-special added token "é" (precomposed) marked normalized matches the decomposed
		// text, which NFC turns into it; one not marked normalized would not.
		added := m["added_tokens"].([]any)
		added = append(added, map[string]any{"id": 9000, "content": "\u00e9", "single_word": false, "lstrip": false,
			"rstrip": false, "normalized": true, "special": false})
		m["added_tokens"] = added
		b, _ := json.Marshal(m)
		tok, err := FromJSON(b, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.Encode("xe\u0301x"); !slices.Equal(got, []int32{87, 9000, 87}) {
			t.Errorf("Encode(decomposed é) = %v, want [87 9000 87]", got)
		}
		added[len(added)-1].(map[string]any)["normalized"] = false
		b, _ = json.Marshal(m)
		if tok, err = FromJSON(b, nil); err != nil {
			t.Fatal(err)
		}
		if got := tok.Encode("xe\u0301x"); slices.Contains(got, 9000) {
			t.Errorf("Encode(decomposed é) = %v: a raw-matched added token matched normalized text", got)
		}
		if got := tok.Encode("x\u00e9x"); !slices.Equal(got, []int32{87, 9000, 87}) {
			t.Errorf("Encode(é) = %v, want [87 9000 87]", got)
		}
	})
}

// FuzzRealFormat checks the real-format tokenizer (the hub pattern on the scanner's fast path):
// Decode(Encode(s)) == s, the scanner splits as regexp2 running the hub pattern through
// atomicPattern, and the bundled tokenizer gives the same ids.
func FuzzRealFormat(f *testing.F) {
	tok, bundled := realTok(f), tiny(f)
	re, err := newRegexSplitter(hubPattern)
	if err != nil {
		f.Fatal(err)
	}
	var fc struct {
		Cases []fixtureCase `json:"cases"`
	}
	readJSON(f, realCasesPath, &fc)
	for _, c := range fc.Cases {
		f.Add(c.Text)
	}
	for _, s := range []string{"'S 'LL 'rE", "  \n\n  z", "$hello!!\n\n", "a\r\n\r\nb", "x\u2003\u2003 y", "'ſ"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if regexp2Comparable(s) {
			if got, want := pieces(scanSplitter{}, s), pieces(re, s); !slices.Equal(got, want) {
				t.Fatalf("scan(%q) = %q, regexp2 %q", s, got, want)
			}
		}
		ids := tok.Encode(s)
		if want := bundled.Encode(s); !slices.Equal(ids, want) {
			t.Fatalf("Encode(%q) = %v, bundled pattern %v", s, ids, want)
		}
		if !utf8.ValidString(s) {
			return
		}
		for _, a := range tok.added.tokens {
			if strings.Contains(s, a.content) {
				return
			}
		}
		if got := tok.Decode(ids); got != s {
			t.Fatalf("Decode(Encode(%q)) = %q (ids %v)", s, got, ids)
		}
	})
}
