package attnd

import (
	"slices"
	"testing"
)

// TestPieces: a long session step is cut at absolute block boundaries into K/V-only pieces of
// at most the chunk, then a last piece with the output rows; short ones stay whole.
func TestPieces(t *testing.T) {
	for _, tc := range []struct {
		name                         string
		pos, n, out, blockLen, chunk int
		want                         []piece
	}{
		{"no chunking", 0, 600, 32, 32, 0, []piece{{0, 600, 32}}},
		{"short", 0, 40, 8, 32, 64, []piece{{0, 40, 8}}},
		{"prefix of one chunk", 0, 96, 32, 32, 64, []piece{{0, 96, 32}}},
		{"aligned", 0, 224, 32, 32, 64, []piece{{0, 64, 0}, {64, 64, 0}, {128, 96, 32}}},
		{"all output rows", 0, 600, 600, 32, 64, []piece{{0, 600, 600}}},
		{"prefill only", 0, 200, 0, 32, 64, []piece{{0, 64, 0}, {64, 64, 0}, {128, 64, 0}, {192, 8, 0}}},
		{"mid-block start", 20, 204, 32, 32, 64, []piece{{0, 44, 0}, {44, 64, 0}, {108, 96, 32}}},
		{"block 4", 6, 30, 4, 4, 8, []piece{{0, 6, 0}, {6, 8, 0}, {14, 8, 0}, {22, 8, 4}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := pieces(tc.pos, tc.n, tc.out, tc.blockLen, tc.chunk)
			if !slices.Equal(got, tc.want) {
				t.Errorf("pieces(pos %d, n %d, out %d, block %d, chunk %d) = %v, want %v", tc.pos, tc.n, tc.out, tc.blockLen, tc.chunk, got, tc.want)
			}
			off := 0
			for i, p := range got {
				last := i == len(got)-1
				switch {
				case p.off != off || p.n <= 0:
					t.Errorf("piece %d %v does not follow offset %d", i, p, off)
				case !last && (p.out != 0 || (tc.pos+p.off+p.n)%tc.blockLen != 0):
					t.Errorf("leading piece %d %v has output rows or does not end at a block boundary", i, p)
				case last && p.out != tc.out:
					t.Errorf("last piece %v: %d output rows, want %d", p, p.out, tc.out)
				case tc.chunk > 0 && len(got) > 1 && p.n-p.out > tc.chunk:
					t.Errorf("piece %d %v feeds more than %d tokens before its output rows", i, p, tc.chunk)
				}
				off += p.n
			}
			if off != tc.n {
				t.Errorf("pieces cover %d tokens, want %d", off, tc.n)
			}
		})
	}
}
