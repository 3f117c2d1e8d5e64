package attnd

import "context"

// StepWaiters is the number of Steps waiting for the step lock.
func StepWaiters(s *Server) int { return s.stepMu.waiting() }

// SetBetweenRounds sets the hook run between two rounds of a chunked step (the lock released);
// set it before the first Step.
func SetBetweenRounds(s *Server, f func(ctx context.Context, round int)) { s.betweenRounds = f }
