package tokenizer

import (
	"math"
	"slices"
)

// noRank marks a symbol pair that no merge joins.
const noRank = math.MaxInt32

// merge is one BPE merge rule: its priority (lower first) and the id it produces.
type merge struct {
	rank int32
	id   int32
}

// pairKey packs two symbol ids into a map key.
func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// bpe is a byte-level BPE model: words are byte strings, symbols are vocabulary ids.
type bpe struct {
	vocab        map[string]int32 // byte-level spelling -> id
	merges       map[uint64]merge // pairKey(left, right) -> rule
	byteIDs      [256]int32       // id of each single byte's symbol, -1 if none
	unk          int32            // id for bytes without a symbol, -1 to drop them
	fuseUnk      bool
	ignoreMerges bool // a word that is itself in the vocabulary is one token
	cache        wordCache
}

// linearMax is the longest word merged with the quadratic scan; longer words use a heap.
const linearMax = 48

// encodeWord appends the ids of word (raw bytes) to dst.
func (m *bpe) encodeWord(dst []int32, word string) []int32 {
	switch {
	case len(word) == 1 && m.byteIDs[word[0]] >= 0:
		return append(dst, m.byteIDs[word[0]])
	case len(word) == 2 && !m.ignoreMerges && m.byteIDs[word[0]] >= 0 && m.byteIDs[word[1]] >= 0:
		// One merge lookup is cheaper than the cache.
		a, b := m.byteIDs[word[0]], m.byteIDs[word[1]]
		if r, ok := m.merges[pairKey(a, b)]; ok {
			return append(dst, r.id)
		}
		return append(dst, a, b)
	}
	if ids, ok := m.cache.get(word); ok {
		return append(dst, ids...)
	}
	start := len(dst)
	dst = m.mergeWord(dst, word)
	m.cache.put(word, dst[start:])
	return dst
}

// mergeWord runs the merges on word and appends the resulting ids to dst.
func (m *bpe) mergeWord(dst []int32, word string) []int32 {
	if m.ignoreMerges {
		if id, ok := m.vocab[byteLevelString(word)]; ok {
			return append(dst, id)
		}
	}
	var buf [linearMax]int32
	syms := buf[:0]
	for k := 0; k < len(word); k++ {
		id := m.byteIDs[word[k]]
		if id < 0 {
			if m.unk < 0 || (m.fuseUnk && len(syms) > 0 && syms[len(syms)-1] == m.unk) {
				continue
			}
			id = m.unk
		}
		syms = append(syms, id)
	}
	if len(syms) <= linearMax {
		syms = m.mergeLinear(syms)
	} else {
		syms = m.mergeHeap(syms)
	}
	return append(dst, syms...)
}

func (m *bpe) rule(a, b int32) merge {
	if r, ok := m.merges[pairKey(a, b)]; ok {
		return r
	}
	return merge{rank: noRank}
}

// mergeLinear applies the lowest-ranked merge (leftmost on ties) until none applies, scanning
// the pairs each round. It is the fastest way for short words.
func (m *bpe) mergeLinear(syms []int32) []int32 {
	if len(syms) < 2 {
		return syms
	}
	var buf [linearMax]merge
	pairs := buf[:0]
	if len(syms)-1 > len(buf) {
		pairs = make([]merge, 0, len(syms)-1)
	}
	pairs = pairs[:len(syms)-1]
	for i := range pairs {
		pairs[i] = m.rule(syms[i], syms[i+1])
	}
	for len(pairs) > 0 {
		best, bestRank := -1, int32(noRank)
		for i, p := range pairs {
			if p.rank < bestRank {
				best, bestRank = i, p.rank
			}
		}
		if best < 0 {
			break
		}
		syms[best] = pairs[best].id
		syms = slices.Delete(syms, best+1, best+2)
		pairs = slices.Delete(pairs, best, best+1)
		if best > 0 {
			pairs[best-1] = m.rule(syms[best-1], syms[best])
		}
		if best < len(pairs) {
			pairs[best] = m.rule(syms[best], syms[best+1])
		}
	}
	return syms
}

// candidate is a pair waiting in the heap: the merge of the symbol at pos with its right neighbour.
type candidate struct {
	rank, pos   int32
	left, right int32 // symbol ids when queued; a mismatch later means the entry is stale
	id          int32
}

func (c candidate) less(d candidate) bool {
	return c.rank < d.rank || (c.rank == d.rank && c.pos < d.pos)
}

// mergeHeap gives the same result as mergeLinear in O(n log n), for long words (runs of
// whitespace, minified text). Symbols form a linked list; merged symbols keep the left position.
func (m *bpe) mergeHeap(syms []int32) []int32 {
	n := len(syms)
	next := make([]int32, n)
	prev := make([]int32, n)
	for i := range n {
		next[i], prev[i] = int32(i+1), int32(i-1)
	}
	next[n-1] = -1
	var h candHeap
	push := func(p int32) {
		q := next[p]
		if q < 0 {
			return
		}
		if r := m.rule(syms[p], syms[q]); r.rank != noRank {
			h.push(candidate{rank: r.rank, pos: p, left: syms[p], right: syms[q], id: r.id})
		}
	}
	for i := range n - 1 {
		push(int32(i))
	}
	for len(h) > 0 {
		c := h.pop()
		q := next[c.pos]
		if syms[c.pos] != c.left || q < 0 || syms[q] != c.right {
			continue
		}
		syms[c.pos] = c.id
		syms[q] = -1
		next[c.pos] = next[q]
		if next[q] >= 0 {
			prev[next[q]] = c.pos
		}
		if prev[c.pos] >= 0 {
			push(prev[c.pos])
		}
		push(c.pos)
	}
	out := syms[:0]
	for p := int32(0); p >= 0; p = next[p] {
		out = append(out, syms[p])
	}
	return out
}

// candHeap is a binary min-heap of candidates.
type candHeap []candidate

func (h *candHeap) push(c candidate) {
	*h = append(*h, c)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if !s[i].less(s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *candHeap) pop() candidate {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		l, small := 2*i+1, i
		if l < len(s) && s[l].less(s[small]) {
			small = l
		}
		if r := l + 1; r < len(s) && s[r].less(s[small]) {
			small = r
		}
		if small == i {
			break
		}
		s[i], s[small] = s[small], s[i]
		i = small
	}
	*h = s
	return top
}
