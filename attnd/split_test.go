package attnd

import (
	"errors"
	"slices"
	"testing"
)

func TestSplit(t *testing.T) {
	owner := []int{0, 0, 1, 1, -1}
	for _, tc := range []struct {
		name    string
		ids     []int32
		want    []part
		wantErr error
	}{
		{
			name: "one group each",
			ids:  []int32{0, 1, 2, 3},
			want: []part{
				{group: 0, rows: []int32{0}, ids: []int32{0, 1}},
				{group: 1, rows: []int32{1}, ids: []int32{2, 3}},
			},
		},
		{
			name: "row in both groups",
			ids:  []int32{0, 2, 1, 0},
			want: []part{
				{group: 0, rows: []int32{0, 1}, ids: []int32{0, -1, 1, 0}},
				{group: 1, rows: []int32{0}, ids: []int32{-1, 2}},
			},
		},
		{
			name: "skipped choices stay skipped",
			ids:  []int32{-1, 3},
			want: []part{{group: 1, rows: []int32{0}, ids: []int32{-1, 3}}},
		},
		{name: "uncovered", ids: []int32{0, 4}, wantErr: ErrUncovered},
		{name: "out of range", ids: []int32{0, 9}, wantErr: ErrUncovered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := make([]float32, len(tc.ids))
			for i := range w {
				w[i] = float32(i + 1)
			}
			got, err := split(tc.ids, w, 2, owner, 2)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d parts, want %d: %+v", len(got), len(tc.want), got)
			}
			for i, p := range got {
				wp := tc.want[i]
				if p.group != wp.group || !slices.Equal(p.rows, wp.rows) || !slices.Equal(p.ids, wp.ids) {
					t.Errorf("part %d = %+v, want %+v", i, p, wp)
				}
				for r, row := range p.rows {
					for j := 0; j < 2; j++ {
						if p.weights[r*2+j] != w[int(row)*2+j] {
							t.Errorf("part %d row %d weight %d = %v, want %v", i, row, j, p.weights[r*2+j], w[int(row)*2+j])
						}
					}
				}
			}
		})
	}
}
