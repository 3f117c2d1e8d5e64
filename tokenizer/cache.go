package tokenizer

import (
	"strings"
	"sync"
)

// Cache bounds. A shard that fills up is emptied, so memory stays bounded whatever the input.
const (
	cacheShards       = 16
	defaultShardWords = 4096
	maxCachedWordLen  = 128
)

// wordCache maps a word to its BPE ids. It is safe for concurrent use; sharding keeps
// goroutines encoding at the same time from contending on one lock.
type wordCache struct {
	shardCap  int // words per shard; 0 disables the cache
	shards    [cacheShards]cacheShard
	resetHook func() // tests: called when a shard is emptied
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int32
	_  [40]byte // keep shards on separate cache lines
}

func newWordCache(shardCap int) wordCache {
	return wordCache{shardCap: shardCap}
}

func (c *wordCache) shard(word string) *cacheShard {
	h := uint32(2166136261) // FNV-1a: words are short, this beats a general hash here
	for i := 0; i < len(word); i++ {
		h = (h ^ uint32(word[i])) * 16777619
	}
	return &c.shards[h%cacheShards]
}

func (c *wordCache) get(word string) ([]int32, bool) {
	if c.shardCap == 0 || len(word) > maxCachedWordLen {
		return nil, false
	}
	s := c.shard(word)
	s.mu.RLock()
	ids, ok := s.m[word]
	s.mu.RUnlock()
	return ids, ok
}

// put stores a copy of ids; word is cloned so the cache never pins the caller's text.
func (c *wordCache) put(word string, ids []int32) {
	if c.shardCap == 0 || len(word) > maxCachedWordLen {
		return
	}
	s := c.shard(word)
	v := append([]int32(nil), ids...)
	s.mu.Lock()
	if s.m == nil || len(s.m) >= c.shardCap {
		if s.m != nil && c.resetHook != nil {
			c.resetHook()
		}
		s.m = make(map[string][]int32, min(c.shardCap, 256))
	}
	s.m[strings.Clone(word)] = v
	s.mu.Unlock()
}
