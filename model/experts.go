package model

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Expert sets are written the way the command line, discovery metadata and logs write them:
// "0-7", "0-3,8,10-11".

// ParseExperts reads an expert set: "LO-HI" (both inclusive: "0-7"), a list "0,3,5", or a mix
// "0-3,8-11". The result is sorted and free of duplicates.
func ParseExperts(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("%w: experts is empty", ErrBadConfig)
	}
	seen := map[int]bool{}
	var ids []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(strings.TrimSpace(lo))
		if err != nil || a < 0 {
			return nil, fmt.Errorf("%w: experts %q: %q is not an id or LO-HI range", ErrBadConfig, s, part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil || b < a {
				return nil, fmt.Errorf("%w: experts %q: %q is not a range LO-HI with LO <= HI", ErrBadConfig, s, part)
			}
		}
		for e := a; e <= b; e++ {
			if seen[e] {
				return nil, fmt.Errorf("%w: experts %q: expert %d listed twice", ErrBadConfig, s, e)
			}
			seen[e] = true
			ids = append(ids, e)
		}
	}
	sort.Ints(ids)
	return ids, nil
}

// FormatExperts writes ids (sorted) in the compact form ParseExperts reads: "0-7", "0-3,8,10-11".
func FormatExperts(ids []int) string {
	s := append([]int(nil), ids...)
	sort.Ints(s)
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j > i {
			fmt.Fprintf(&b, "%d-%d", s[i], s[j])
		} else {
			fmt.Fprintf(&b, "%d", s[i])
		}
		i = j + 1
	}
	return b.String()
}

// SplitExperts divides experts 0..n-1 into groups contiguous ranges as evenly as possible
// (16 experts, 2 groups: 0-7 and 8-15).
func SplitExperts(n, groups int) ([][]int, error) {
	if groups <= 0 || groups > n {
		return nil, fmt.Errorf("%w: groups %d not in [1, %d]", ErrBadConfig, groups, n)
	}
	out := make([][]int, groups)
	for g := range out {
		lo, hi := g*n/groups, (g+1)*n/groups
		for e := lo; e < hi; e++ {
			out[g] = append(out[g], e)
		}
	}
	return out, nil
}
