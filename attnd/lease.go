package attnd

import (
	"context"
	"time"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// Leases: every session carries one, renewed by each Step that runs it and by Renew; the reaper
// frees the sessions whose lease ran out, so the sessions of a gateway that died (kill -9, a
// partition) do not hold KV memory and admission slots forever.

// leaseOf is the lease of a session opened with lease_ms ms (0: the default).
func (s *Server) leaseOf(ms int32) time.Duration {
	if ms <= 0 {
		return s.cfg.SessionLease
	}
	return min(time.Duration(ms)*time.Millisecond, MaxSessionLease)
}

// renew extends ss's lease from now. s.mu is held.
func (ss *session) renew(now time.Time) { ss.expires = now.Add(ss.lease) }

// Renew implements pb.AttentionServer.
func (s *Server) Renew(_ context.Context, req *pb.RenewRequest) (*pb.RenewResponse, error) {
	if n := len(req.GetSessionIds()); n > s.cfg.MaxSessions {
		return nil, invalid("session_ids has %d ids: want at most max_sessions %d", n, s.cfg.MaxSessions)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	resp := &pb.RenewResponse{}
	for _, id := range req.GetSessionIds() {
		if ss, ok := s.sessions[id]; ok {
			ss.renew(now)
		} else {
			resp.Unknown = append(resp.Unknown, id)
		}
	}
	return resp, nil
}

// Expired is the number of sessions freed because their lease ran out.
func (s *Server) Expired() int64 { return s.expired.Load() }

// reap frees the expired sessions every tick until ctx ends.
func (s *Server) reap(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(max(min(s.cfg.SessionLease/4, time.Second), 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			s.mu.Lock()
			for id, ss := range s.sessions {
				if now.After(ss.expires) && !ss.inStep { // a step renews what it runs
					s.closed(ss)
					s.freeCache(ss.cache)
					delete(s.sessions, id)
					s.expired.Add(1)
				}
			}
			s.mu.Unlock()
		}
	}
}
