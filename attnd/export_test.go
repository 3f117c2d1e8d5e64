package attnd

import "context"

// StepWaiters is the number of Steps waiting for the step lock.
func StepWaiters(s *Server) int { return s.stepMu.waiting() }

// SetBetweenRounds sets the hook run between two rounds of a chunked step (the lock released);
// set it before the first Step.
func SetBetweenRounds(s *Server, f func(ctx context.Context, round int)) { s.betweenRounds = f }

// PlanStats are the idle prepared steps and the runs of reused ones.
func PlanStats(s *Server) (idle int, reused int64) {
	s.plans.mu.Lock()
	defer s.plans.mu.Unlock()
	return len(s.plans.idle), s.plans.reused
}

// IdleBuffers is the number of idle fan-outs' host buffers kept for the next steps.
func IdleBuffers(s *Server) int {
	s.hopMu.Lock()
	defer s.hopMu.Unlock()
	return len(s.hopFree)
}

// DropIdle runs what the process's idle trim runs on s.
func DropIdle(s *Server) { s.dropHopBuffers() }
