package attnd

import (
	"context"
	"log/slog"
)

// servable reports whether steps can be answered with routes r: every expert is served by some
// group, or, with Config.AllowMissingExperts, at least top_k experts are (degraded serving).
func (s *Server) servable(r *routes) bool {
	if r == nil || len(r.groups) == 0 {
		return false
	}
	if !r.degraded() {
		return true
	}
	return s.cfg.AllowMissingExperts && r.served() >= s.m.Cfg.TopK
}

// followRoutes sets the health status from the routes just installed: SERVING while they are
// servable, NOT_SERVING otherwise (so the Consul check takes this attnd out of discovery while
// some expert has no replica, and puts it back when one returns). The first time it turns
// SERVING it also registers the instance and releases WaitServing. After Shutdown began it does
// nothing.
func (s *Server) followRoutes(r *routes) {
	ok := s.servable(r)
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	if s.stopping || ok == s.healthy {
		return
	}
	s.healthy = ok
	s.node.SetServing(ok)
	first := false
	if ok {
		s.servingOnce.Do(func() {
			first = true
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.InfoTimeout)
			defer cancel()
			if err := s.node.Register(ctx, s.Instance()); err != nil {
				slog.Error("attnd: register", "err", err)
			}
			close(s.serving)
		})
	}
	switch {
	case first:
	case ok && r.degraded():
		slog.Warn("attnd: SERVING degraded again (--allow-missing-experts)", "missing", r.uncovered())
	case ok:
		slog.Info("attnd: every expert served again: SERVING")
	default:
		slog.Warn("attnd: experts lost their last replica: NOT_SERVING until they return", "missing", r.uncovered())
	}
}

// stopHealth reports NOT_SERVING for good: later route changes no longer touch health.
func (s *Server) stopHealth() {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	s.stopping = true
	s.healthy = false
	s.node.SetServing(false)
}
