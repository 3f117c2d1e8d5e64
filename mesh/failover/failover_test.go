// Package failover_test runs the mesh in one process, discovering through a real Consul agent
// (services.ConsulRegistry on a consultest dev agent), and kills expert replicas under load.
// It is its own package because the Consul API client keeps idle HTTP connections that the
// mesh package's goroutine-leak check would report. Test-only: nothing imports it; it imports
// the services, their domain packages and services/consultest.
package failover_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/services/consultest"
	"github.com/dlmesh/dlmesh/tokenizer"

	"github.com/dlmesh/dlmesh/internal/fixtures"

	"github.com/dlmesh/dlmesh/internal/testutil"
)

const tinyDir = "../../models/llada2-tiny-go"

// genLen keeps the requests short: the tiny model on the CPU backend takes 50–70 ms a step.
const genLen = 32

type (
	genCase = fixtures.GenCase
	genFile = fixtures.GenFile
)

// cluster is the mesh under test; experts[g] are the replicas of group g.
type cluster struct {
	reg     *services.ConsulRegistry
	experts [][]*expertd.Server
	attnd   *attnd.Server
	gateway *gateway.Server
	client  *gateway.Client
}

// addReplica starts a replica of group g serving ids and registers it in Consul.
func (c *cluster) addReplica(t *testing.T, g int, ids []int) *expertd.Server {
	t.Helper()
	ctx := context.Background()
	e, err := expertd.New(ctx, expertd.Config{ModelDir: tinyDir, Experts: ids, Group: fmt.Sprint(g)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("expertd-g%d-r%d", g, len(c.experts[g]))
	if err := c.reg.Register(ctx, e.Instance(id)); err != nil {
		t.Fatal(err)
	}
	c.experts[g] = append(c.experts[g], e)
	t.Cleanup(func() {
		_ = c.reg.Deregister(context.Background(), id)
		_ = e.Shutdown(context.Background())
	})
	return e
}

// kill stops a replica abruptly: in-flight calls are cut and it stays registered in Consul
// (its gRPC health check turns critical).
func kill(e *expertd.Server) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = e.Shutdown(ctx)
}

// timedStream is one Generate stream with the arrival time of every step event.
type timedStream struct {
	ids   []int32
	steps []time.Time
	err   error
}

func (c *cluster) generate(ctx context.Context, gc genCase, id string) timedStream {
	var s timedStream
	req := &pb.GenerateRequest{RequestId: id, Input: &pb.GenerateRequest_Prompt{Prompt: gc.Prompt},
		Params: &pb.DecodeParams{Mode: gc.Mode, GenLength: genLen, BlockLength: int32(gc.BlockLength)}}
	fin, err := c.client.Generate(ctx, req, func(ev *pb.GenerateEvent) error {
		if ev.GetStep() != nil {
			s.steps = append(s.steps, time.Now())
		}
		return nil
	})
	s.ids, s.err = fin.GetTokenIds(), err
	return s
}

// references generates every case through the in-process engine (all experts local).
func references(t *testing.T, f genFile, cases []genCase) [][]int32 {
	t.Helper()
	m, err := model.Load(context.Background(), tinyDir, cpu.New(), model.LoadOptions{Attention: true, Experts: model.AllExperts(16)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tok, err := tokenizer.Load(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.New(engine.Config{MaskID: f.MaskID, EOSID: f.EOSID, Vocab: m.Cfg.Vocab, MaxContext: m.Cfg.MaxPositions},
		engine.NewLocalStepper(m), tok)
	defer eng.Stop()
	out := make([][]int32, len(cases))
	for i, gc := range cases {
		p, err := diffusion.Preset(gc.Mode)
		if err != nil {
			t.Fatal(err)
		}
		p.GenLen, p.BlockLen = genLen, gc.BlockLength
		r, err := eng.Generate(context.Background(), engine.Request{ID: fmt.Sprint("ref", i), Prompt: gc.PromptIDs, Params: p}, nil)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = r.IDs
	}
	return out
}

// TestFailoverThroughConsul: gateway + attnd + 2 groups × 2 expertd replicas, discovering each
// other through a real Consul agent. Under 8 concurrent streams one replica of group 0 is
// stopped abruptly (no deregistration) and a third replica of group 1 joins: every stream
// completes with the engine's output, and the new replica serves calls. Then every replica of
// group 1 is stopped: a request fails with UNAVAILABLE naming experts 8-15 within its deadline,
// attnd turns NOT_SERVING and leaves Consul's passing list, and a new group-1 replica brings it
// (and the requests) back.
func TestFailoverThroughConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Consul agent and a whole mesh; skipped with -short")
	}
	agent := consultest.Start(t)
	f := fixtures.LoadGen(t)
	cases := f.Cases[:8]
	refs := references(t, f, cases)

	c, groups := newCluster(t, agent.Addr, 500*time.Millisecond)
	reg := c.reg
	ctx := context.Background()
	var err error
	for g, ids := range groups {
		c.addReplica(t, g, ids)
		c.addReplica(t, g, ids)
	}
	if c.attnd, err = attnd.New(ctx, attnd.Config{ModelDir: tinyDir, ID: "attnd-0", ExpertTimeout: 5 * time.Second}, reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.attnd.Shutdown(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.attnd.WaitServing(wctx); err != nil {
		t.Fatal(err)
	}
	c.startGateway(t, ctx)
	testutil.WaitFor(t, "the gateway seeing attnd through Consul", 15*time.Second, func() bool {
		l, _ := reg.Instances(ctx, services.KindAttnd)
		return len(l) == 1
	})
	// warm-up: the gateway's watch may lag the health check by a moment
	testutil.WaitFor(t, "a first request through the mesh", 30*time.Second, func() bool {
		return c.generate(ctx, cases[0], "warmup").err == nil
	})

	// 8 streams; mid-run one replica of group 0 dies and a third replica of group 1 joins
	results := make([]timedStream, len(cases))
	var wg sync.WaitGroup
	start := time.Now()
	for i, gc := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			results[i] = c.generate(sctx, gc, fmt.Sprint("s", i))
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	kill(c.experts[0][0])
	joined := time.Now()
	third := c.addReplica(t, 1, groups[1])
	firstCall := make(chan time.Duration, 1) // time from the join to the third replica's first call
	stopPoll := make(chan struct{})
	go func() {
		for third.Calls() == 0 {
			select {
			case <-stopPoll:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		firstCall <- time.Since(joined)
	}()
	defer close(stopPoll)
	wg.Wait()
	failed := 0
	for i, r := range results {
		switch {
		case r.err != nil:
			failed++
			t.Errorf("stream %d (%s): %v", i, cases[i].Mode, r.err)
		case !slices.Equal(r.ids, refs[i]):
			failed++
			t.Errorf("stream %d (%s): ids differ from the engine's\n got %v\nwant %v", i, cases[i].Mode, r.ids, refs[i])
		}
	}
	before, around := stepGaps(results, killed)
	t.Logf("8 streams in %v, %d failed; step gap before the kill: median %v; worst step gap in the 5 s after the kill: %v",
		time.Since(start).Round(time.Millisecond), failed, before.Round(time.Millisecond), around.Round(time.Millisecond))

	// the third replica takes traffic: more streams until it has served calls
	for deadline := time.Now().Add(30 * time.Second); third.Calls() == 0 && time.Now().Before(deadline); {
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r := c.generate(ctx, cases[i], fmt.Sprint("more", i)); r.err != nil {
					t.Errorf("stream after the join: %v", r.err)
				}
			}()
		}
		wg.Wait()
	}
	select {
	case d := <-firstCall:
		t.Logf("third group-1 replica (joined %v after the kill) served its first call %v after it was registered; %d calls so far",
			joined.Sub(killed).Round(time.Millisecond), d.Round(time.Millisecond), third.Calls())
	case <-time.After(time.Second):
		t.Fatal("the replica added mid-run served no expert call")
	}

	// every replica of group 1 gone: a request fails fast, naming the missing experts
	for _, e := range c.experts[1] {
		kill(e)
	}
	const deadline = 20 * time.Second
	rctx, rcancel := context.WithTimeout(ctx, deadline)
	defer rcancel()
	t0 := time.Now()
	r := c.generate(rctx, cases[0], "nogroup")
	took := time.Since(t0)
	if r.err == nil {
		t.Fatal("generate succeeded with every replica of group 1 stopped")
	}
	if st := status.Convert(r.err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "8-15") {
		t.Errorf("want UNAVAILABLE naming experts 8-15, got %v", r.err)
	}
	if took >= deadline {
		t.Errorf("failed after %v, not within the %v deadline", took, deadline)
	}
	t.Logf("with group 1 gone the request failed after %v: %v", took.Round(time.Millisecond), r.err)

	// attnd reports NOT_SERVING, so Consul stops listing it; a new group-1 replica brings it back
	testutil.WaitFor(t, "attnd out of Consul's passing list", 15*time.Second, func() bool {
		l, _ := reg.Instances(ctx, services.KindAttnd)
		return len(l) == 0
	})
	back := time.Now()
	c.addReplica(t, 1, groups[1])
	testutil.WaitFor(t, "attnd passing in Consul again", 15*time.Second, func() bool {
		l, _ := reg.Instances(ctx, services.KindAttnd)
		return len(l) == 1
	})
	passing := time.Since(back)
	testutil.WaitFor(t, "a request through the mesh again", 30*time.Second, func() bool {
		r := c.generate(ctx, cases[0], "back")
		if r.err != nil {
			t.Logf("after %v: %v", time.Since(back).Round(time.Millisecond), r.err)
		}
		return r.err == nil && slices.Equal(r.ids, refs[0])
	})
	t.Logf("attnd passing %v after the replica registered", passing.Round(time.Millisecond))
	t.Logf("group 1 back: first request done %v after the new replica registered", time.Since(back).Round(time.Millisecond))
}

// stepGaps returns the median gap between consecutive step events of a stream before at, and the
// largest gap of an interval that ends within 5 s after at.
func stepGaps(rs []timedStream, at time.Time) (median, worst time.Duration) {
	var before []time.Duration
	for _, r := range rs {
		for i := 1; i < len(r.steps); i++ {
			gap := r.steps[i].Sub(r.steps[i-1])
			switch end := r.steps[i]; {
			case end.Before(at):
				before = append(before, gap)
			case end.Sub(at) <= 5*time.Second:
				worst = max(worst, gap)
			}
		}
	}
	if len(before) > 0 {
		sort.Slice(before, func(i, j int) bool { return before[i] < before[j] })
		median = before[len(before)/2]
	}
	return median, worst
}

// newCluster returns an empty cluster over a Consul registry at addr (checks every interval) and
// the tiny model's experts split in two groups.
func newCluster(t *testing.T, addr string, interval time.Duration) (*cluster, [][]int) {
	t.Helper()
	reg, err := services.NewConsulRegistry(services.ConsulConfig{Addr: addr, CheckInterval: interval})
	if err != nil {
		t.Fatal(err)
	}
	groups, err := model.SplitExperts(16, 2)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{reg: reg, experts: make([][]*expertd.Server, 2)}, groups
}

// startGateway starts the cluster's gateway and a client of it, both closed at cleanup.
func (c *cluster) startGateway(t *testing.T, ctx context.Context) {
	t.Helper()
	var err error
	if c.gateway, err = gateway.New(ctx, gateway.Config{ModelDir: tinyDir, ID: "gateway-0", Listen: "127.0.0.1:0"}, c.reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.gateway.Shutdown(context.Background()) })
	if c.client, err = gateway.Dial(c.gateway.Addr(), services.ClientConfig{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.client.Close() })
}
