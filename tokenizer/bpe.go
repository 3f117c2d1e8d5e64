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

// linearMax is the longest word merged with the quadratic scan; longer words use buckets.
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
	if len(word) > linearMax {
		syms = make([]int32, 0, len(word))
	}
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
		syms = m.mergeBuckets(syms)
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

// mergeList is the state of a long word being merged: symbols in a linked list over their
// original positions (a merged symbol keeps the left one), and for each position the rule of
// the pair it starts (rank[p], id[p]; rank noRank when none). A position's pair only ever grows
// (both symbols get longer or stay), so it never returns to a pair it had; as ranks name pairs
// one to one, a queued (rank, position) whose rank is no longer rank[position] is stale.
type mergeList struct {
	m                    *bpe
	syms                 []int32
	next, prev, rank, id []int32
}

func (m *bpe) newMergeList(syms []int32) *mergeList {
	n := len(syms)
	buf := make([]int32, 4*n)
	l := &mergeList{m: m, syms: syms, next: buf[:n:n], prev: buf[n : 2*n : 2*n], rank: buf[2*n : 3*n : 3*n], id: buf[3*n:]}
	for i := range n {
		l.next[i], l.prev[i], l.rank[i] = int32(i+1), int32(i-1), noRank
		if i+1 < n {
			if r, ok := m.merges[pairKey(syms[i], syms[i+1])]; ok {
				l.rank[i], l.id[i] = r.rank, r.id
			}
		}
	}
	l.next[n-1] = -1
	return l
}

// refresh looks up the rule of the pair that now starts at p.
func (l *mergeList) refresh(p int32) {
	l.rank[p] = noRank
	if q := l.next[p]; q >= 0 {
		if r, ok := l.m.merges[pairKey(l.syms[p], l.syms[q])]; ok {
			l.rank[p], l.id[p] = r.rank, r.id
		}
	}
}

// apply merges the pair at p and refreshes the pairs at p and before it; it returns the
// position before p, or -1.
func (l *mergeList) apply(p int32) int32 {
	q := l.next[p]
	l.syms[p] = l.id[p]
	l.rank[q] = noRank // q is gone: its queued pair is stale
	l.next[p] = l.next[q]
	if l.next[q] >= 0 {
		l.prev[l.next[q]] = p
	}
	l.refresh(p)
	if b := l.prev[p]; b >= 0 {
		l.refresh(b)
		return b
	}
	return -1
}

func (l *mergeList) result() []int32 {
	out := l.syms[:0]
	for p := int32(0); p >= 0; p = l.next[p] {
		out = append(out, l.syms[p])
	}
	return out
}

// runHeap merges until no rule applies, taking the lowest rank first and the leftmost pair on
// ties, as mergeLinear does; h holds the queued keys (heapKey), stale ones included.
func (l *mergeList) runHeap(h keyHeap) []int32 {
	h.init()
	for len(h) > 0 {
		k := h.pop()
		p := int32(uint32(k))
		if l.rank[p] != int32(k>>32) {
			continue
		}
		b := l.apply(p)
		if l.rank[p] != noRank {
			h.push(heapKey(l.rank[p], p))
		}
		if b >= 0 && l.rank[b] != noRank {
			h.push(heapKey(l.rank[b], b))
		}
	}
	return l.result()
}

// mergeHeap gives the same result as mergeLinear in O(n log n), with a heap of every pair.
func (m *bpe) mergeHeap(syms []int32) []int32 {
	l := m.newMergeList(syms)
	h := make(keyHeap, 0, len(syms))
	for i, r := range l.rank {
		if r != noRank {
			h = append(h, heapKey(r, int32(i)))
		}
	}
	return l.runHeap(h)
}

// mergeBuckets gives the same result as mergeLinear for long words (runs of whitespace,
// minified text, a megabyte of one letter), faster than mergeHeap: pairs wait in one bucket
// per rank, taken in rank order, each bucket in position order. That is the heap's order as
// long as a merge only makes pairs of a higher rank than its own, as in a trained BPE, where a
// token is merged further only after it exists. A merge that makes a lower-ranked pair hands
// everything still queued to runHeap, which needs no such order.
func (m *bpe) mergeBuckets(syms []int32) []int32 {
	l := m.newMergeList(syms)
	buckets := make(map[int32]*bucket)
	var ranks rankHeap
	add := func(r, p int32) {
		b := buckets[r]
		if b == nil {
			b = &bucket{}
			buckets[r] = b
			ranks.push(r)
		}
		if len(b.pos) > 0 && p < b.pos[len(b.pos)-1] {
			b.unsorted = true
		}
		b.pos = append(b.pos, p)
	}
	counts := make(map[int32]int32)
	for _, r := range l.rank {
		if r != noRank {
			counts[r]++
		}
	}
	for r, c := range counts { // size the first buckets exactly: a long run fills one
		buckets[r] = &bucket{pos: make([]int32, 0, c)}
		ranks.push(r)
	}
	for i, r := range l.rank {
		if r != noRank {
			add(r, int32(i))
		}
	}
	for len(ranks) > 0 {
		r := ranks.pop()
		b := buckets[r]
		delete(buckets, r)
		if b.unsorted {
			slices.Sort(b.pos)
		}
		for i, p := range b.pos {
			if l.rank[p] != r {
				continue
			}
			before := l.apply(p)
			for _, c := range [2]int32{p, before} {
				if c < 0 || l.rank[c] == noRank {
					continue
				}
				if l.rank[c] < r { // out of order: finish with the heap
					h := make(keyHeap, 0, len(syms))
					for _, q := range b.pos[i+1:] {
						h = append(h, heapKey(r, q))
					}
					for br, ob := range buckets {
						for _, q := range ob.pos {
							h = append(h, heapKey(br, q))
						}
					}
					for _, q := range [2]int32{p, before} { // the pairs just made (a duplicate is harmless: stale once used)
						if q >= 0 && l.rank[q] != noRank {
							h = append(h, heapKey(l.rank[q], q))
						}
					}
					return l.runHeap(h)
				}
				add(l.rank[c], c)
			}
		}
	}
	return l.result()
}

// bucket holds the positions queued with one rank.
type bucket struct {
	pos      []int32
	unsorted bool
}

// rankHeap is a binary min-heap of the ranks that have a bucket.
type rankHeap []int32

func (h *rankHeap) push(r int32) {
	*h = append(*h, r)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if s[p] <= s[i] {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *rankHeap) pop() int32 {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		l, small := 2*i+1, i
		if l < len(s) && s[l] < s[small] {
			small = l
		}
		if r := l + 1; r < len(s) && s[r] < s[small] {
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
