package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"
)

// RemoteStepper is the engine.Stepper of the gateway: sessions live on attnd instances. Open
// picks the attnd with the fewest open sessions from the pool and keeps that replica reserved
// for the session's lifetime (affinity: its KV cache is there); Step sends each attnd its
// sessions' part of the batch, in parallel; Close frees the session. Every call has a deadline
// and goes through the attnd's breaker. Safe for concurrent use.
type RemoteStepper struct {
	pool        *services.Pool
	prefix      string // this stepper's prefix of attnd session ids
	stepTimeout time.Duration
	callTimeout time.Duration

	mu       sync.Mutex
	sessions map[string]*remoteSession
}

type remoteSession struct {
	r       *services.Replica
	release func()
}

var _ engine.Stepper = (*RemoteStepper)(nil)

// NewRemoteStepper returns a stepper over the attnd replicas of pool.
func NewRemoteStepper(pool *services.Pool, stepTimeout, callTimeout time.Duration) *RemoteStepper {
	var nonce [6]byte
	_, _ = rand.Read(nonce[:]) // crypto/rand.Read never fails
	return &RemoteStepper{pool: pool, prefix: hex.EncodeToString(nonce[:]) + "/", stepTimeout: stepTimeout, callTimeout: callTimeout,
		sessions: map[string]*remoteSession{}}
}

// remoteID is the attnd session id of an engine session: prefixed per stepper, so that gateways
// sharing an attnd never collide on a session id (the engine's ids are only unique per engine).
func (st *RemoteStepper) remoteID(session string) string { return st.prefix + session }

// Sessions is the number of sessions open through this stepper.
func (st *RemoteStepper) Sessions() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return len(st.sessions)
}

func (st *RemoteStepper) call(ctx context.Context, r *services.Replica, d time.Duration, fn func(context.Context, pb.AttentionClient) error) error {
	return r.Breaker().Do(ctx, func(ctx context.Context) error {
		cctx, cancel := services.WithTimeout(ctx, d)
		defer cancel()
		return fn(cctx, pb.NewAttentionClient(r.Conn()))
	})
}

// Open implements engine.Stepper: it picks the attnd and opens the session there.
func (st *RemoteStepper) Open(ctx context.Context, session string, capacity, blockLen int) error {
	r, release, err := st.pool.Pick()
	if err != nil {
		return fmt.Errorf("gateway: open session: %w", err)
	}
	err = st.call(ctx, r, st.callTimeout, func(ctx context.Context, c pb.AttentionClient) error {
		_, err := c.Open(ctx, &pb.OpenRequest{SessionId: st.remoteID(session), Capacity: int32(capacity), BlockLength: int32(blockLen)})
		return err
	})
	if err != nil {
		release()
		return fmt.Errorf("gateway: open session on %s: %w", r.Instance().ID, err)
	}
	st.mu.Lock()
	st.sessions[session] = &remoteSession{r: r, release: release}
	st.mu.Unlock()
	return nil
}

// Close implements engine.Stepper; closing an unknown session is not an error.
func (st *RemoteStepper) Close(ctx context.Context, session string) error {
	st.mu.Lock()
	s, ok := st.sessions[session]
	delete(st.sessions, session)
	st.mu.Unlock()
	if !ok {
		return nil
	}
	defer s.release()
	return st.call(ctx, s.r, st.callTimeout, func(ctx context.Context, c pb.AttentionClient) error {
		_, err := c.Close(ctx, &pb.CloseRequest{SessionId: st.remoteID(session)})
		return err
	})
}

// Step implements engine.Stepper: one Attention.Step per attnd holding some of the sessions,
// in parallel. When some attnd calls fail, the error is an *engine.StepError naming the
// sessions of those calls; the outputs of the others are valid.
func (st *RemoteStepper) Step(ctx context.Context, steps []engine.SeqStep) ([]model.StepOut, engine.StepInfo, error) {
	type call struct {
		s   *remoteSession
		idx []int
		req *pb.StepRequest
	}
	var calls []*call
	byReplica := map[*services.Replica]*call{}
	st.mu.Lock()
	for i, sp := range steps {
		s, ok := st.sessions[sp.Session]
		if !ok {
			st.mu.Unlock()
			return nil, engine.StepInfo{}, fmt.Errorf("gateway: step: session %q: %w", sp.Session, errdefs.ErrUnknownSession)
		}
		c, ok := byReplica[s.r]
		if !ok {
			c = &call{s: s, req: &pb.StepRequest{}}
			byReplica[s.r] = c
			calls = append(calls, c)
		}
		c.idx = append(c.idx, i)
		c.req.Sessions = append(c.req.Sessions, &pb.SessionStep{SessionId: st.remoteID(sp.Session), StartPos: int32(sp.StartPos),
			Tokens: sp.Tokens, OutRows: int32(sp.OutRows), TopK: int32(sp.TopK), InvTemperature: sp.InvTemp})
	}
	st.mu.Unlock()

	outs := make([]model.StepOut, len(steps))
	errs := make([]error, len(calls))
	degraded := make([]bool, len(calls))
	var wg sync.WaitGroup
	for ci, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp *pb.StepResponse
			err := st.call(ctx, c.s.r, st.stepTimeout, func(ctx context.Context, ac pb.AttentionClient) error {
				var err error
				resp, err = ac.Step(ctx, c.req)
				return err
			})
			if err == nil {
				err = st.convert(resp, c.idx, steps, outs)
			}
			if err != nil {
				errs[ci] = fmt.Errorf("gateway: step on %s: %w", c.s.r.Instance().ID, err)
				return
			}
			degraded[ci] = resp.GetStats().GetDegraded()
		}()
	}
	wg.Wait()
	info := engine.StepInfo{}
	var failed *engine.StepError
	for ci, c := range calls {
		if errs[ci] == nil {
			if degraded[ci] {
				if info.Degraded == nil {
					info.Degraded = make([]bool, len(steps))
				}
				for _, i := range c.idx {
					info.Degraded[i] = true
				}
			}
			continue
		}
		if failed == nil {
			failed = &engine.StepError{Sessions: map[string]error{}}
		}
		for _, i := range c.idx {
			failed.Sessions[steps[i].Session] = errs[ci]
		}
	}
	if failed != nil {
		return outs, info, failed
	}
	return outs, info, nil
}

// convert decodes an attnd StepResponse into the StepOuts of the steps idx.
func (st *RemoteStepper) convert(resp *pb.StepResponse, idx []int, steps []engine.SeqStep, outs []model.StepOut) error {
	res := resp.GetResults()
	if len(res) != len(idx) {
		return fmt.Errorf("gateway: attnd returned %d results for %d sessions", len(res), len(idx))
	}
	for k, i := range idx {
		r, sp := res[k], steps[i]
		rows, topK := sp.OutRows, max(sp.TopK, 1)
		o := model.StepOut{TopK: topK, IDs: make([]int32, rows*topK), Logits: make([]float32, rows*topK), LSE: make([]float32, rows)}
		if want := st.remoteID(sp.Session); r.GetSessionId() != want {
			return fmt.Errorf("gateway: attnd result %d is for session %q, want %q", k, r.GetSessionId(), want)
		}
		if err := wire.DecodeI32(o.IDs, r.GetIds()); err != nil {
			return fmt.Errorf("gateway: session %q ids: %w", sp.Session, err)
		}
		if err := wire.DecodeF32(o.Logits, r.GetLogits(), false); err != nil {
			return fmt.Errorf("gateway: session %q logits: %w", sp.Session, err)
		}
		if err := wire.DecodeF32(o.LSE, r.GetLse(), false); err != nil {
			return fmt.Errorf("gateway: session %q lse: %w", sp.Session, err)
		}
		outs[i] = o
	}
	return nil
}
