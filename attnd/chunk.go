package attnd

import (
	"context"
	"fmt"
	"time"

	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// Chunked prefill: a session step that feeds more than Config.PrefillChunk tokens before its
// output rows (a long prompt sent to Step directly) is cut into pieces at block boundaries, and
// the Step runs in rounds, one piece of every such session per round, the step lock released
// between rounds (chunk.go, fifo.go). A piece is exact: attention is block-causal with blocks
// counted from position 0 (a row at position p sees the positions before
// min(end of the step, (p/blockLen+1)·blockLen)), so a piece that ends at a block boundary needs
// nothing the later pieces feed, and they read its K/V from the cache as they would have read
// it from the same forward.

// Chunked is the number of session steps cut into pieces, since start.
func (s *Server) Chunked() int64 { return s.chunked.Load() }

// piece is one round's part of a session step: tokens[off : off+n] at start_pos+off, the last
// out rows with LM-head results.
type piece struct{ off, n, out int }

// pieces cuts a session step of n tokens at pos whose last out rows get results into pieces
// that each feed at most chunk tokens before their output rows: the leading ones K/V only (out
// 0) and ending at absolute block boundaries (multiples of blockLen), the last one with the out
// rows. chunk is a positive multiple of blockLen, or 0: never cut.
func pieces(pos, n, out, blockLen, chunk int) []piece {
	if chunk <= 0 || n-out <= chunk {
		return []piece{{0, n, out}}
	}
	var ps []piece
	off := 0
	for n-out-off > chunk {
		// chunk ≥ blockLen, so the boundary is past pos+off, and before the output rows
		end := (pos+off+chunk)/blockLen*blockLen - pos
		ps = append(ps, piece{off, end - off, 0})
		off = end
	}
	return append(ps, piece{off, n - off, out})
}

// cut plans the pieces of every session of a claimed step; the step has as many rounds as its
// longest plan.
func (s *Server) cut(cl *claimed) (plans [][]piece, rounds int) {
	plans = make([][]piece, len(cl.seqs))
	for i, sq := range cl.seqs {
		if cl.fails[i] != nil {
			continue
		}
		plans[i] = pieces(sq.Pos, len(sq.Tokens), sq.OutRows, cl.lens[i], s.cfg.chunkTokens(cl.lens[i]))
		if len(plans[i]) > 1 {
			s.chunked.Add(1)
		}
		rounds = max(rounds, len(plans[i]))
	}
	return plans, rounds
}

// runRound runs round `round` of a step: each session's piece of that round, one model.Step
// per block length (in micro-batches), and sets outs[i] for the sessions whose last piece it
// was. s.stepMu is held. It returns the summed expert time.
func (s *Server) runRound(ctx context.Context, r *routes, cl *claimed, plans [][]piece, round int, outs []model.StepOut) (int64, error) {
	seqs := make([]model.StepSeq, len(cl.seqs))
	todo := make([]bool, len(cl.seqs))
	for i, ps := range plans {
		if cl.fails[i] != nil || round >= len(ps) {
			continue
		}
		p, sq := ps[round], cl.seqs[i]
		sq.Pos += p.off
		sq.Tokens = sq.Tokens[p.off : p.off+p.n]
		sq.OutRows = p.out
		seqs[i], todo[i] = sq, true
	}
	routs := make([]model.StepOut, len(seqs))
	var expertsNs int64
	for i := range seqs {
		if !todo[i] {
			continue
		}
		var idx []int
		for j := i; j < len(seqs); j++ {
			if todo[j] && cl.lens[j] == cl.lens[i] {
				idx = append(idx, j)
				todo[j] = false
			}
		}
		ns, err := s.microSteps(ctx, r, seqs, idx, cl.lens[i], routs)
		if err != nil {
			return 0, err
		}
		expertsNs += ns
	}
	for i, ps := range plans {
		if cl.fails[i] == nil && round == len(ps)-1 {
			outs[i] = routs[i]
		}
	}
	return expertsNs, nil
}

// resume checks, between two rounds of a chunked step, that the step may go on: attnd was not
// stopped meanwhile (Shutdown frees every cache), and each session with pieces left is still
// open (one closed during the step fails alone, its cache freed by unclaim). It counts what the
// rounds so far wrote and renews the leases of the step's sessions. s.stepMu is held again.
func (s *Server) resume(steps []*pb.SessionStep, cl *claimed, plans [][]piece, round int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		return fmt.Errorf("attnd: stopped after round %d of a chunked step: %w", round, ErrNotReady)
	}
	s.written(steps)
	now := time.Now()
	for i, sess := range cl.sess {
		if sess == nil || cl.fails[i] != nil {
			continue
		}
		if sess.closed && round < len(plans[i]) {
			cl.fails[i] = fmt.Errorf("attnd: sessions[%d] %q: closed during its chunked step (after round %d of %d): %w",
				i, steps[i].GetSessionId(), round, len(plans[i]), errdefs.ErrUnknownSession)
			continue
		}
		sess.renew(now)
	}
	return nil
}
