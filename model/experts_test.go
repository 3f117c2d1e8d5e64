package model

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseExperts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		bad  bool
	}{
		{in: "0-7", want: []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{in: "8-15", want: []int{8, 9, 10, 11, 12, 13, 14, 15}},
		{in: "3,1, 2", want: []int{1, 2, 3}},
		{in: "0-1,8-9", want: []int{0, 1, 8, 9}},
		{in: "", bad: true},
		{in: "7-3", bad: true},
		{in: "1,1", bad: true},
		{in: "a", bad: true},
		{in: "-1", bad: true},
	} {
		got, err := ParseExperts(tc.in)
		if tc.bad != (err != nil) || !tc.bad && !slices.Equal(got, tc.want) || tc.bad && !errors.Is(err, ErrBadConfig) {
			t.Errorf("ParseExperts(%q) = %v, %v", tc.in, got, err)
		}
		if !tc.bad && FormatExperts(got) != strings.ReplaceAll(FormatExperts(tc.want), " ", "") {
			t.Errorf("FormatExperts(%v) = %q", got, FormatExperts(got))
		}
	}
	g, err := SplitExperts(16, 2)
	if err != nil || FormatExperts(g[0]) != "0-7" || FormatExperts(g[1]) != "8-15" {
		t.Errorf("SplitExperts(16, 2) = %v, %v", g, err)
	}
}
