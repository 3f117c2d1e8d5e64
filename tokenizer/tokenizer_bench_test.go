package tokenizer

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goSource returns up to about 1 MB of the Go standard library's strings package source.
func goSource(b *testing.B) string {
	b.Helper()
	dir := filepath.Join(os.Getenv("GOROOT"), "src", "strings")
	if os.Getenv("GOROOT") == "" {
		dir = "/usr/local/go/src/strings"
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		b.Skipf("no Go sources under %s: %v", dir, err)
	}
	var sb strings.Builder
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		sb.Write(src)
		if sb.Len() >= 1<<20 {
			break
		}
	}
	s := sb.String()
	return s[:min(len(s), 1<<20)]
}

func BenchmarkEncode(b *testing.B) {
	tok := tiny(b)
	var fx strings.Builder
	for _, c := range fixtures(b) {
		fx.WriteString(c.Text)
		fx.WriteByte('\n')
	}
	inputs := []struct {
		name string
		text string
	}{
		{"go-source", goSource(b)},
		{"fixtures", fx.String()},
	}
	for _, in := range inputs {
		b.Run(in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.text)))
			ntok := 0
			for b.Loop() {
				ntok = len(tok.Encode(in.text))
			}
			b.ReportMetric(float64(ntok), "tokens/op")
		})
		b.Run(in.name+"/nocache", func(b *testing.B) {
			t := freshTiny(b)
			t.model.cache = newWordCache(0)
			b.SetBytes(int64(len(in.text)))
			for b.Loop() {
				t.Encode(in.text)
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	tok := tiny(b)
	ids := tok.Encode(goSource(b))
	b.SetBytes(int64(len(tok.Decode(ids))))
	for b.Loop() {
		tok.Decode(ids)
	}
}

func BenchmarkEncodeParallel(b *testing.B) {
	tok := tiny(b)
	src := goSource(b)
	text := src[:min(len(src), 64<<10)]
	b.SetBytes(int64(len(text)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tok.Encode(text)
		}
	})
}

// BenchmarkLongWord encodes one pre-token of a single repeated letter, the worst case of BPE.
func BenchmarkLongWord(b *testing.B) {
	tok := tiny(b)
	for _, n := range []int{64 << 10, 1 << 20} {
		text := strings.Repeat("a", n)
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				tok.Encode(text)
			}
		})
	}
}
