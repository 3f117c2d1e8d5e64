package attnd

import (
	"context"
	"fmt"
	"maps"
	"runtime/debug"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dlmesh/dlmesh/diffusion"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// usage is what the open sessions hold, kept in atomics so Info never waits for a step.
type usage struct {
	sessions   atomic.Int64
	kvTokens   atomic.Int64 // cache positions holding K/V, summed over the sessions
	kvCapacity atomic.Int64 // cache positions reserved by the sessions' windows
	// lastRelease is when releaseIdle last returned memory to the OS (unix ns).
	lastRelease atomic.Int64
}

// opened counts a new session of capacity positions. s.mu is held.
func (s *Server) opened(capacity int) {
	s.usage.sessions.Add(1)
	s.usage.kvCapacity.Add(int64(capacity))
}

// closed uncounts a session being freed. s.mu is held.
func (s *Server) closed(ss *session) {
	s.usage.sessions.Add(-1)
	s.usage.kvCapacity.Add(-int64(ss.cache.Cap))
	s.usage.kvTokens.Add(-int64(ss.counted))
}

// idleReleaseEvery bounds how often an attnd that fell idle returns freed memory to the OS.
const idleReleaseEvery = 10 * time.Second

// releaseIdle returns the memory of the freed KV caches to the operating system (a GC and a
// scavenge) when the last session closed, at most once per idleReleaseEvery: after a burst of
// load an idle attnd's resident memory goes back to its baseline instead of staying at the
// peak. s.mu must not be held.
func (s *Server) releaseIdle() {
	now := time.Now().UnixNano()
	last := s.usage.lastRelease.Load()
	if now-last < int64(idleReleaseEvery) || !s.usage.lastRelease.CompareAndSwap(last, now) {
		return
	}
	debug.FreeOSMemory()
}

// written counts the K/V the sessions of a step wrote. s.mu is held.
func (s *Server) written(steps []*pb.SessionStep) {
	for _, st := range steps {
		if ss, ok := s.sessions[st.GetSessionId()]; ok {
			s.usage.kvTokens.Add(int64(ss.cache.Len - ss.counted))
			ss.counted = ss.cache.Len
		}
	}
}

// Meter is the meter of Step calls (for the latency histogram).
func (s *Server) Meter() *services.LoadMeter { return s.meter }

// Load returns the load of Step, the sessions' use of the KV cache and the routed token counts.
func (s *Server) Load() *pb.LoadStats {
	l := s.meter.Snapshot().Proto()
	l.Sessions = int32(s.usage.sessions.Load())
	l.KvTokens = s.usage.kvTokens.Load()
	l.KvCapacityTokens = s.usage.kvCapacity.Load()
	l.ExpertTokens = s.stats.expertTotals()
	l.GroupTokens = s.stats.groupTotals()
	l.MaxSessions = int32(s.cfg.MaxSessions)
	l.MaxKvTokens = s.cfg.MaxKVTokens
	return l
}

// Info implements pb.AttentionServer: the model, the current expert groups and the load. It does
// not wait for a step in progress.
func (s *Server) Info(context.Context, *pb.InfoRequest) (*pb.ModelInfo, error) {
	base := s.info.Load()
	if base == nil {
		return nil, ErrNotReady
	}
	info := proto.Clone(base).(*pb.ModelInfo)
	info.Meta = maps.Clone(base.GetMeta())
	info.Meta["groups"] = fmt.Sprint(s.Groups())
	info.Load = s.Load()
	return info, nil
}

// setInfo keeps what Info reports of the model just loaded. s.mu is held.
func (s *Server) setInfo() {
	c := s.m.Cfg
	s.backend = s.m.Be.Name()
	s.info.Store(&pb.ModelInfo{ModelType: "llada2_moe", Fingerprint: s.fingerprint, Vocab: int32(c.Vocab), Hidden: int32(c.Hidden),
		Layers: int32(c.Layers), Experts: int32(c.Experts), TopK: int32(c.TopK), BlockLength: diffusion.DefaultBlockLen,
		MaskId: s.maskID, EosId: s.eosID, Gpus: services.GPUInfo(s.m.Be),
		Meta: map[string]string{"max_positions": fmt.Sprint(c.MaxPositions)}})
}
