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

// mergeHeap gives the same result as mergeLinear in O(n log n), for long words (runs of
// whitespace, minified text, a megabyte of one letter). Symbols form a linked list over their
// original positions; a merged symbol keeps the left one. Each position remembers the rule of
// the pair it starts (rank[p], id[p]); the heap holds keys rank<<32|position, lowest rank first
// and leftmost on ties, as mergeLinear picks. A key whose rank is no longer its position's is
// stale and skipped: a position's pair only ever grows (both symbols get longer or stay), so it
// never returns to a pair it had, and ranks name pairs one to one.
func (m *bpe) mergeHeap(syms []int32) []int32 {
	n := len(syms)
	buf := make([]int32, 4*n)
	next, prev, rank, id := buf[:n:n], buf[n:2*n:2*n], buf[2*n:3*n:3*n], buf[3*n:]
	h := make(keyHeap, 0, n)
	for i := range n {
		next[i], prev[i], rank[i] = int32(i+1), int32(i-1), noRank
		if i+1 < n {
			if r, ok := m.merges[pairKey(syms[i], syms[i+1])]; ok {
				rank[i], id[i] = r.rank, r.id
				h = append(h, heapKey(r.rank, int32(i)))
			}
		}
	}
	next[n-1] = -1
	h.init()
	// refresh looks up the pair that now starts at p and queues it.
	refresh := func(p int32) {
		rank[p] = noRank
		if q := next[p]; q >= 0 {
			if r, ok := m.merges[pairKey(syms[p], syms[q])]; ok {
				rank[p], id[p] = r.rank, r.id
				h.push(heapKey(r.rank, p))
			}
		}
	}
	for len(h) > 0 {
		k := h.pop()
		p := int32(uint32(k))
		if rank[p] != int32(k>>32) {
			continue // stale
		}
		q := next[p]
		syms[p] = id[p]
		rank[q] = noRank // q is gone: its queued pair is stale
		next[p] = next[q]
		if next[q] >= 0 {
			prev[next[q]] = p
		}
		refresh(p)
		if prev[p] >= 0 {
			refresh(prev[p])
		}
	}
	out := syms[:0]
	for p := int32(0); p >= 0; p = next[p] {
		out = append(out, syms[p])
	}
	return out
}

func heapKey(rank, pos int32) uint64 { return uint64(uint32(rank))<<32 | uint64(uint32(pos)) }

// keyHeap is a 4-ary min-heap of keys: half the levels of a binary heap, and the four children
// of a node share a cache line.
type keyHeap []uint64

const heapArity = 4

func (h keyHeap) init() {
	if len(h) < 2 {
		return
	}
	for i := (len(h) - 2) / heapArity; i >= 0; i-- {
		h.down(i)
	}
}

func (h *keyHeap) push(k uint64) {
	*h = append(*h, k)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / heapArity
		if s[p] <= k {
			break
		}
		s[i] = s[p]
		i = p
	}
	s[i] = k
}

func (h *keyHeap) pop() uint64 {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	*h = s[:last]
	if last > 0 {
		h.down(0)
	}
	return top
}

// down moves h[i] down to its place.
func (h keyHeap) down(i int) {
	k := h[i]
	for {
		c := heapArity*i + 1
		if c >= len(h) {
			break
		}
		best := c
		for j := c + 1; j < min(c+heapArity, len(h)); j++ {
			if h[j] < h[best] {
				best = j
			}
		}
		if h[best] >= k {
			break
		}
		h[i] = h[best]
		i = best
	}
	h[i] = k
}
