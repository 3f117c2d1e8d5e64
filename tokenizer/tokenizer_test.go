package tokenizer

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func TestFixtures(t *testing.T) {
	tok := tiny(t)
	for i, c := range fixtures(t) {
		t.Run(caseName(i, c.Text), func(t *testing.T) {
			if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
				t.Errorf("Encode(%q)\n got %v\nwant %v", c.Text, got, c.IDs)
			}
			if got := tok.Decode(c.IDs); got != c.Decoded {
				t.Errorf("Decode(%v) = %q, want %q", c.IDs, got, c.Decoded)
			}
		})
	}
}

// TestPythonParity checks Encode on 1500 random tricky strings against the reference tokenizer.
func TestPythonParity(t *testing.T) {
	tok := tiny(t)
	bad := 0
	for _, c := range pythonCases(t) {
		if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
			t.Errorf("Encode(%q)\n got %v\nwant %v", c.Text, got, c.IDs)
			if bad++; bad > 5 {
				t.Fatal("too many mismatches")
			}
		}
		if got := tok.Decode(c.IDs); got != c.Text {
			t.Errorf("Decode(Encode(%q)) = %q", c.Text, got)
		}
	}
}

// TestRegexp2Pipeline runs the fixtures through the general pre-tokenizer path with regexp2
// doing the split, as it would for a pattern without a hand-written scanner.
func TestRegexp2Pipeline(t *testing.T) {
	tok := freshTiny(t)
	sp, err := newRegexSplitter(scannerPattern)
	if err != nil {
		t.Fatal(err)
	}
	tok.pre.fast = false
	tok.pre.steps[0].split = sp
	tok.model.cache = newWordCache(0)
	for i, c := range fixtures(t) {
		t.Run(caseName(i, c.Text), func(t *testing.T) {
			if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
				t.Errorf("Encode(%q)\n got %v\nwant %v", c.Text, got, c.IDs)
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	tok := tiny(t)
	if got := tok.VocabSize(); got != 8192 {
		t.Errorf("VocabSize() = %d, want 8192", got)
	}
	ids := []struct {
		name string
		got  int32
		want int32
	}{
		{"MaskID", tok.MaskID(), 8190},
		{"EOSID", tok.EOSID(), 8187},
		{"BOSID", tok.BOSID(), 8186},
	}
	for _, c := range ids {
		t.Run(c.name, func(t *testing.T) {
			if c.got != c.want {
				t.Errorf("%s() = %d, want %d", c.name, c.got, c.want)
			}
		})
	}
	tokens := []struct {
		content string
		id      int32
		special bool
	}{
		{"<|startoftext|>", 8186, true},
		{"<|endoftext|>", 8187, true},
		{"<role>", 8188, true},
		{"</role>", 8189, true},
		{"<|mask|>", 8190, true},
		{"<|role_end|>", 8191, true},
		{"!", 0, false},
		{"Ġ", 220, false},
	}
	for _, c := range tokens {
		t.Run(c.content, func(t *testing.T) {
			if id, ok := tok.TokenID(c.content); !ok || id != c.id {
				t.Errorf("TokenID(%q) = %d, %v; want %d", c.content, id, ok, c.id)
			}
			if s, ok := tok.Token(c.id); !ok || s != c.content {
				t.Errorf("Token(%d) = %q, %v; want %q", c.id, s, ok, c.content)
			}
			if got := tok.IsSpecial(c.id); got != c.special {
				t.Errorf("IsSpecial(%d) = %v, want %v", c.id, got, c.special)
			}
		})
	}
	for _, id := range []int32{-1, 8192, 1 << 30} {
		if s, ok := tok.Token(id); ok {
			t.Errorf("Token(%d) = %q, want not found", id, s)
		}
		if tok.IsSpecial(id) {
			t.Errorf("IsSpecial(%d) = true", id)
		}
	}
	if _, ok := tok.TokenID("no such token"); ok {
		t.Error("TokenID(no such token) found")
	}
	if got := tok.ChatTemplate(); got != "" {
		t.Errorf("ChatTemplate() = %q, want empty (tiny config has none)", got)
	}
}

func tinyJSON(tb testing.TB) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(tinyDir, fileTokenizer))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestConfig(t *testing.T) {
	tj := tinyJSON(t)
	cases := []struct {
		name           string
		config         string // "" means nil
		mask, eos, bos int32
		template       string
	}{
		{"nil config uses defaults", "", 8190, 8187, 8186, ""},
		{"strings", `{"mask_token":"<role>","eos_token":"</role>","bos_token":"<|role_end|>","chat_template":"{{x}}"}`, 8188, 8189, 8191, "{{x}}"},
		{"added token objects", `{"mask_token":{"content":"<|mask|>","special":true},"eos_token":{"content":"<role>"}}`, 8190, 8188, 8186, ""},
		{"unknown names give -1", `{"mask_token":"[MASK]","eos_token":"</s>","bos_token":"<s>"}`, -1, -1, -1, ""},
		{"null falls back", `{"mask_token":null,"eos_token":null}`, 8190, 8187, 8186, ""},
		{"template list", `{"chat_template":[{"name":"tool_use","template":"a"},{"name":"default","template":"b"}]}`, 8190, 8187, 8186, "b"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cfg []byte
			if c.config != "" {
				cfg = []byte(c.config)
			}
			tok, err := FromJSON(tj, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tok.MaskID() != c.mask || tok.EOSID() != c.eos || tok.BOSID() != c.bos {
				t.Errorf("mask, eos, bos = %d, %d, %d; want %d, %d, %d", tok.MaskID(), tok.EOSID(), tok.BOSID(), c.mask, c.eos, c.bos)
			}
			if tok.ChatTemplate() != c.template {
				t.Errorf("ChatTemplate() = %q, want %q", tok.ChatTemplate(), c.template)
			}
		})
	}
}

func TestLoadMissingDir(t *testing.T) {
	_, err := Load(t.TempDir())
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load(empty dir) = %v, want a not-exist error", err)
	}
}

func TestLoadWithoutConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, fileTokenizer), tinyJSON(t), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tok.MaskID() != 8190 {
		t.Errorf("MaskID() = %d, want 8190", tok.MaskID())
	}
}

// edit decodes the tiny tokenizer.json, lets fn change it, and encodes it again.
func edit(tb testing.TB, fn func(m map[string]any)) []byte {
	tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(tinyJSON(tb), &m); err != nil {
		tb.Fatal(err)
	}
	fn(m)
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func model(m map[string]any) map[string]any { return m["model"].(map[string]any) }

func pre(m map[string]any, i int) map[string]any {
	return m["pre_tokenizer"].(map[string]any)["pretokenizers"].([]any)[i].(map[string]any)
}

func TestMalformed(t *testing.T) {
	cases := []struct {
		name    string
		json    func(tb testing.TB) []byte
		config  string
		kind    error
		message string
	}{
		{"not json", func(testing.TB) []byte { return []byte("{") }, "", ErrMalformed, "tokenizer: tokenizer.json: parse"},
		{"empty object", func(testing.TB) []byte { return []byte("{}") }, "", ErrMalformed, "no model"},
		{"wordpiece", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["type"] = "WordPiece" })
		}, "", ErrUnsupported, `tokenizer: tokenizer.json: model.type "WordPiece" not supported`},
		{"vocab wrong type", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["vocab"] = []any{1, 2} })
		}, "", ErrMalformed, "parse"},
		{"negative id", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["vocab"].(map[string]any)["!"] = -3 })
		}, "", ErrMalformed, "out of range"},
		{"duplicate id", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["vocab"].(map[string]any)["zzzz"] = 5 })
		}, "", ErrMalformed, "share id 5"},
		{"merge with three parts", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["merges"].([]any)[3] = "a b c" })
		}, "", ErrMalformed, "model.merges[3]"},
		{"merge of wrong type", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["merges"].([]any)[0] = 7 })
		}, "", ErrMalformed, "model.merges[0]"},
		{"merge out of vocab", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["merges"].([]any)[1] = []any{"Ġ", "☃"} })
		}, "", ErrMalformed, "not in vocab"},
		{"byte fallback", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["byte_fallback"] = true })
		}, "", ErrUnsupported, "byte_fallback"},
		{"unk not in vocab", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { model(m)["unk_token"] = "<unk>" })
		}, "", ErrMalformed, "unk_token"},
		{"normalizer", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { m["normalizer"] = map[string]any{"type": "Lowercase"} })
		}, "", ErrUnsupported, `normalizer.type "Lowercase" not supported`},
		{"normalizer in a sequence", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) {
				m["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "NFC"}, map[string]any{"type": "NFKD"}}}
			})
		}, "", ErrUnsupported, `normalizer.normalizers[1].type "NFKD" not supported`},
		{"possessive regex unbalanced", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { pre(m, 0)["pattern"] = map[string]any{"Regex": "[a-z++"} })
		}, "", ErrMalformed, "missing ]"},
		{"no pre-tokenizer", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { m["pre_tokenizer"] = nil })
		}, "", ErrUnsupported, "pre_tokenizer null"},
		{"no byte level", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) {
				p := m["pre_tokenizer"].(map[string]any)
				p["pretokenizers"] = p["pretokenizers"].([]any)[:1]
			})
		}, "", ErrUnsupported, "no ByteLevel"},
		{"bad regex", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { pre(m, 0)["pattern"] = map[string]any{"Regex": "(a"} })
		}, "", ErrMalformed, "pre_tokenizer.pretokenizers[0].pattern"},
		{"split behavior", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { pre(m, 0)["behavior"] = "Contiguous" })
		}, "", ErrUnsupported, `behavior "Contiguous"`},
		{"unknown pre-tokenizer", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { pre(m, 0)["type"] = "Metaspace" })
		}, "", ErrUnsupported, `pre_tokenizer.pretokenizers[0].type "Metaspace" not supported`},
		{"decoder", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { m["decoder"] = map[string]any{"type": "WordPiece"} })
		}, "", ErrUnsupported, `decoder.type "WordPiece"`},
		{"single word", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { m["added_tokens"].([]any)[0].(map[string]any)["single_word"] = true })
		}, "", ErrUnsupported, "single_word"},
		{"added token id", func(tb testing.TB) []byte {
			return edit(tb, func(m map[string]any) { m["added_tokens"].([]any)[0].(map[string]any)["id"] = 1 << 40 })
		}, "", ErrMalformed, "added_tokens[0]: id"},
		{"bad config", tinyJSON, "[1,2]", ErrMalformed, "tokenizer: tokenizer_config.json: parse"},
		{"bad config token", tinyJSON, `{"mask_token": 5}`, ErrMalformed, "mask_token"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cfg []byte
			if c.config != "" {
				cfg = []byte(c.config)
			}
			tok, err := FromJSON(c.json(t), cfg)
			if err == nil {
				t.Fatalf("FromJSON succeeded (%T), want an error", tok)
			}
			if !errors.Is(err, c.kind) {
				t.Errorf("error %q is not %v", err, c.kind)
			}
			if !strings.Contains(err.Error(), c.message) {
				t.Errorf("error %q does not contain %q", err, c.message)
			}
		})
	}
}

// TestMergeFormats checks that merges written as "a b" strings encode exactly like pairs.
func TestMergeFormats(t *testing.T) {
	b := edit(t, func(m map[string]any) {
		ms := model(m)["merges"].([]any)
		for i, p := range ms {
			pair := p.([]any)
			ms[i] = pair[0].(string) + " " + pair[1].(string)
		}
	})
	tok, err := FromJSON(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range fixtures(t) {
		t.Run(caseName(i, c.Text), func(t *testing.T) {
			if got := tok.Encode(c.Text); !slices.Equal(got, c.IDs) {
				t.Errorf("Encode(%q)\n got %v\nwant %v", c.Text, got, c.IDs)
			}
		})
	}
}

// TestPipelineOptions covers pre-tokenizer settings the LLaDA2 file does not use.
func TestPipelineOptions(t *testing.T) {
	cases := []struct {
		name string
		fn   func(m map[string]any)
		text string
		want []string // words BPE sees
	}{
		{"byte level with prefix space and regex", func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}
		}, "Hello world's  end", []string{" Hello", " world", "'s", " ", " end"}},
		{"split removed", func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]any{"String": " "}, "behavior": "Removed", "invert": false},
				map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
			}}
		}, "a bc  d", []string{"a", "bc", "d"}},
		{"split isolated string", func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
				map[string]any{"type": "Split", "pattern": map[string]any{"String": "."}, "behavior": "Isolated", "invert": false},
			}}
		}, "a.b..c", []string{"a", ".", "b", ".", ".", "c"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok, err := FromJSON(edit(t, c.fn), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tok.pre.fast {
				t.Fatal("fast path chosen for a different pipeline")
			}
			if got := tok.pre.split(nil, c.text); !slices.Equal(got, c.want) {
				t.Errorf("split(%q) = %q, want %q", c.text, got, c.want)
			}
			var want []int32
			for _, w := range c.want {
				want = tok.model.encodeWord(want, w)
			}
			if got := tok.Encode(c.text); !slices.Equal(got, want) {
				t.Errorf("Encode(%q) = %v, want %v", c.text, got, want)
			}
		})
	}
}

func TestAddedTokens(t *testing.T) {
	tj := edit(t, func(m map[string]any) {
		m["added_tokens"] = append(m["added_tokens"].([]any),
			map[string]any{"id": 8192, "content": "<|mask|>x", "special": false},
			map[string]any{"id": 8193, "content": "[L]", "lstrip": true, "special": true},
			map[string]any{"id": 8194, "content": "[R]", "rstrip": true, "special": true},
		)
	})
	tok, err := FromJSON(tj, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain := func(s string) []int32 { return tiny(t).Encode(s) }
	cases := []struct {
		name string
		text string
		want []int32
	}{
		{"longest first", "<|mask|>x<|mask|>", []int32{8192, 8190}},
		{"adjacent", "<role></role>", []int32{8188, 8189}},
		{"partial is text", "<|mask|", plain("<|mask|")},
		{"lstrip", "a  [L] b", append(plain("a"), append([]int32{8193}, plain(" b")...)...)},
		{"rstrip", "a [R]  \tb", append(plain("a "), append([]int32{8194}, plain("b")...)...)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := tok.Encode(c.text); !slices.Equal(got, c.want) {
				t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
			}
		})
	}
	if tok.VocabSize() != 8195 || !tok.IsSpecial(8193) || tok.IsSpecial(8192) {
		t.Errorf("VocabSize %d, IsSpecial(8193) %v, IsSpecial(8192) %v", tok.VocabSize(), tok.IsSpecial(8193), tok.IsSpecial(8192))
	}
}

func TestDecodeLossy(t *testing.T) {
	// Expected values from Python: bytes.decode("utf-8", errors="replace").
	cases := []struct {
		in   string
		want string
	}{
		{"\xe4\xb8", "\ufffd"},
		{"\xf0\x9f\x9a", "\ufffd"},
		{"\xe0\x80", "\ufffd\ufffd"},
		{"\xff", "\ufffd"},
		{"\xc0\xaf", "\ufffd\ufffd"},
		{"\xed\xa0\x80", "\ufffd\ufffd\ufffd"},
		{"\xf4\x90\x80\x80", "\ufffd\ufffd\ufffd\ufffd"},
		{"\xe4\xb8a", "\ufffda"},
		{"a\x80\x80b", "a\ufffd\ufffdb"},
		{"\xf0\x9f\x9a\x80", "🚀"},
		{"\xe4\xb8\xe4\xb8\xad", "\ufffd中"},
		{"\xf1\x80\x80", "\ufffd"},
		{"\xc2", "\ufffd"},
	}
	tok := tiny(t)
	for _, c := range cases {
		t.Run(caseName(0, c.in), func(t *testing.T) {
			if got := lossyString([]byte(c.in)); got != c.want {
				t.Errorf("lossyString(%q) = %q, want %q", c.in, got, c.want)
			}
			// The same bytes as single-byte tokens through Decode.
			var ids []int32
			for i := 0; i < len(c.in); i++ {
				ids = append(ids, tok.model.byteIDs[c.in[i]])
			}
			if got := tok.Decode(ids); got != c.want {
				t.Errorf("Decode(bytes of %q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
	if got := tok.Decode([]int32{-5, 99999, 64, 1 << 30}); got != "a" {
		t.Errorf("Decode with unknown ids = %q, want %q", got, "a")
	}
}

// TestHeapMatchesLinear checks the two merge loops against each other on every word of the
// fixtures and on random byte strings.
func TestHeapMatchesLinear(t *testing.T) {
	tok := tiny(t)
	var words []string
	for _, c := range fixtures(t) {
		words = append(words, tok.pre.split(nil, c.Text)...)
		words = append(words, c.Text)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"e", "r", "in", " ", "\t", "t", "h", "é", "中", "}", "\n", "ing", "  "}
	for range 500 {
		var b strings.Builder
		for range rng.IntN(80) + 1 {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		words = append(words, b.String())
	}
	for _, n := range []int{49, 1000, 4097} { // runs of one symbol: many equal-rank pairs
		words = append(words, strings.Repeat("a", n), strings.Repeat(" ", n), strings.Repeat("\t", n), strings.Repeat("ab", n))
	}
	for _, w := range words {
		syms := func() []int32 {
			var s []int32
			for i := 0; i < len(w); i++ {
				s = append(s, tok.model.byteIDs[w[i]])
			}
			return s
		}
		lin := tok.model.mergeLinear(syms())
		var heap, buckets []int32
		if len(w) > 1 {
			heap, buckets = tok.model.mergeHeap(syms()), tok.model.mergeBuckets(syms())
		} else {
			heap, buckets = syms(), syms()
		}
		if !slices.Equal(lin, heap) || !slices.Equal(lin, buckets) {
			t.Fatalf("word %q: linear %v, heap %v, buckets %v", w, lin, heap, buckets)
		}
	}
}

// TestMergeOutOfOrderRules: merges whose results are merged by lower-ranked rules (not what
// training makes, but what a tokenizer.json may hold) send mergeBuckets to the heap, with the
// same result as the quadratic loop.
func TestMergeOutOfOrderRules(t *testing.T) {
	// vocab: a b c ab abc bc; rules: rank 0 (ab, c), rank 1 (a, b), rank 2 (b, c).
	m := &bpe{merges: map[uint64]merge{pairKey(3, 2): {0, 4}, pairKey(0, 1): {1, 3}, pairKey(1, 2): {2, 5}}}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 300 {
		n := rng.IntN(200) + 2
		syms := make([]int32, n)
		for i := range syms {
			syms[i] = int32(rng.IntN(3))
		}
		lin := m.mergeLinear(slices.Clone(syms))
		if got := m.mergeBuckets(slices.Clone(syms)); !slices.Equal(got, lin) {
			t.Fatalf("%v: buckets %v, linear %v", syms, got, lin)
		}
		if got := m.mergeHeap(slices.Clone(syms)); !slices.Equal(got, lin) {
			t.Fatalf("%v: heap %v, linear %v", syms, got, lin)
		}
	}
	if got := m.mergeBuckets([]int32{0, 1, 2, 0, 1, 2}); !slices.Equal(got, []int32{4, 4}) {
		t.Errorf("abcabc = %v, want [abc abc]", got)
	}
}

// FuzzMergeHeap checks the heap and bucket merge loops against the quadratic one on any byte
// string.
func FuzzMergeHeap(f *testing.F) {
	tok := tiny(f)
	for _, s := range []string{"aaaa", "    \t\t", "func main() {", "inininin", "ééé", "\xff\xfe"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, w []byte) {
		if len(w) < 2 || len(w) > 512 {
			return
		}
		syms := func() []int32 {
			s := make([]int32, len(w))
			for i, b := range w {
				s[i] = tok.model.byteIDs[b]
			}
			return s
		}
		lin := tok.model.mergeLinear(syms())
		if heap := tok.model.mergeHeap(syms()); !slices.Equal(lin, heap) {
			t.Fatalf("word %q: linear %v, heap %v", w, lin, heap)
		}
		if buckets := tok.model.mergeBuckets(syms()); !slices.Equal(lin, buckets) {
			t.Fatalf("word %q: linear %v, buckets %v", w, lin, buckets)
		}
	})
}

// TestConcurrentEncode encodes from many goroutines with a small cache that keeps emptying;
// run it with -race.
func TestConcurrentEncode(t *testing.T) {
	tok := freshTiny(t)
	var resets atomic.Int64
	tok.model.cache = newWordCache(8)
	tok.model.cache.resetHook = func() { resets.Add(1) }
	ref := freshTiny(t)
	ref.model.cache = newWordCache(0)

	var texts []string
	for _, c := range fixtures(t) {
		texts = append(texts, c.Text)
	}
	for _, c := range pythonCases(t)[:200] {
		texts = append(texts, c.Text)
	}
	want := make([][]int32, len(texts))
	for i, s := range texts {
		want[i] = ref.Encode(s)
	}
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan string, workers)
	for w := range workers {
		wg.Go(func() {
			for round := range 3 {
				for k := range texts {
					i := (k*7 + w*13 + round) % len(texts)
					if got := tok.Encode(texts[i]); !slices.Equal(got, want[i]) {
						errs <- texts[i]
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for s := range errs {
		t.Errorf("concurrent Encode(%q) differs from serial", s)
	}
	if resets.Load() == 0 {
		t.Error("cache never filled: the test did not exercise eviction")
	}
}
