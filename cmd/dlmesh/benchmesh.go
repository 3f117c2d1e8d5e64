package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/wire"
)

// meshOpts are bench --mesh's knobs.
type meshOpts struct {
	dir, backend     string
	kv, act          kernels.DType
	ctxs, batches    []int
	steps, warmup    int
	blockLen, groups int
	wireBF16, asJSON bool
	readGiB          float64
	readReps         int
	startTimeout     time.Duration
	exe              string // the dlmesh binary the services run from (default: this one)
}

// meshRow is one point of bench --mesh: the same step timed in the monolith and through the mesh.
type meshRow struct {
	Backend string `json:"backend"`
	Ctx     int    `json:"ctx"`
	Batch   int    `json:"batch"`
	Groups  int    `json:"groups"`
	KV      string `json:"kv_dtype"`
	Act     string `json:"expert_act_dtype"`
	Steps   int    `json:"steps"`
	// MonoMs is model.Step in one process (what attnd runs, with the experts local); MonoGraphMs
	// the same step replayed as a CUDA graph (as plain bench times it; = MonoMs without graphs).
	MonoMs      float64 `json:"mono_ms"`
	MonoGraphMs float64 `json:"mono_graph_ms"`
	// MeshMs is attnd's Step RPC as a client sees it, attnd and the expertd groups separate
	// processes; AttndMs the step inside attnd; ExpertsMsPerLayer attnd's time in the expert
	// fan-out per MoE layer (summed over micro-batches); HopMsPerLayer (MeshMs−MonoMs) per MoE layer.
	MeshMs            float64 `json:"mesh_ms"`
	AttndMs           float64 `json:"attnd_ms"`
	ExpertsMsPerLayer float64 `json:"experts_ms_per_moe_layer"`
	HopMsPerLayer     float64 `json:"hop_ms_per_moe_layer"`
	XMono             float64 `json:"mesh_x_mono"`
	XMonoGraph        float64 `json:"mesh_x_mono_graph"`
	// Floor as in bench: the bytes the step reads at the read rate measured in the run.
	Touched  int     `json:"experts_touched"`
	ReadGB   float64 `json:"read_gb"`
	FloorMs  float64 `json:"floor_ms,omitempty"`
	XFloor   float64 `json:"mesh_x_floor,omitempty"`
	ArgmaxEq float64 `json:"argmax_agree"` // fraction of rows whose mesh argmax is the monolith's

	perLayer []int // distinct experts per MoE layer
}

// benchTok is the token of sequence i at position p in bench --mesh (both sides feed the same).
func benchTok(i, p, vocab int) int32 { return int32((i*131 + p*17 + 7) % vocab) }

// runMeshBench times, for every ctx × batch, a step of the monolith (the checkpoint in this
// process) and then of the mesh (attnd and `groups` expertd as child processes of this binary
// on the same backend), in one run, and prints both with the ratio and the hop per layer.
func runMeshBench(ctx context.Context, out io.Writer, o meshOpts) error {
	if o.groups < 1 {
		return fmt.Errorf("--groups %d: want at least 1", o.groups)
	}
	cfg, err := model.LoadConfig(o.dir)
	if err != nil {
		return err
	}
	if cfg.Experts%o.groups != 0 {
		return fmt.Errorf("--groups %d: does not divide the %d experts", o.groups, cfg.Experts)
	}
	rows, mono, rate, err := meshMonolith(ctx, o, cfg)
	if err != nil {
		return fmt.Errorf("monolith: %w", err)
	}
	if err := meshThroughServices(ctx, o, cfg, rows, mono); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	moe := float64(len(cfg.MoELayers()))
	for i := range rows {
		r := &rows[i]
		r.XMono, r.XMonoGraph = r.MeshMs/r.MonoMs, r.MeshMs/r.MonoGraphMs
		r.HopMsPerLayer = (r.MeshMs - r.MonoMs) / moe
		r.ExpertsMsPerLayer /= moe
		if rate > 0 {
			r.XFloor = r.MeshMs / r.FloorMs
		}
	}
	if o.asJSON {
		return json.NewEncoder(out).Encode(rows)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "backend\tkv\tact\tctx\tbatch\tgroups\tmono ms\tmono graph ms\tmesh ms\tmesh/mono\tmesh/graph\tattnd ms\texperts ms/layer\thop ms/layer\tfloor ms\tmesh/floor\targmax agree\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.3f\t%.3f\t%.2f\t%.3f\t%.3f\t%.2f\t%.2f\t%.3f\t\n", r.Backend, r.KV, r.Act, r.Ctx, r.Batch, r.Groups,
			r.MonoMs, r.MonoGraphMs, r.MeshMs, r.XMono, r.XMonoGraph, r.AttndMs, r.ExpertsMsPerLayer, r.HopMsPerLayer, r.FloorMs, r.XFloor, r.ArgmaxEq)
	}
	return tw.Flush()
}

// meshMonolith loads the checkpoint whole, prefills every point's context with model.Step and
// times the block step; it returns the rows, each point's argmax ids, and the read rate. The
// backend is closed before it returns, so the mesh's processes get the device's memory.
func meshMonolith(ctx context.Context, o meshOpts, cfg *model.Config) ([]meshRow, [][]int32, float64, error) {
	be, err := newBackend(o.backend)
	if err != nil {
		return nil, nil, 0, err
	}
	defer be.Close()
	rate, err := measureReadRate(be, o.readGiB, o.readReps)
	if err != nil {
		return nil, nil, 0, err
	}
	if rate > 0 {
		fmt.Fprintf(os.Stderr, "read rate of %s: %.1f GB/s\n", be.Name(), rate/1e9)
	}
	fmt.Fprintf(os.Stderr, "monolith: loading %s on %s...\n", o.dir, be.Name())
	m, err := model.Load(ctx, o.dir, be, model.LoadOptions{Attention: true, Experts: model.AllExperts(cfg.Experts), ExpertActDType: o.act})
	if err != nil {
		return nil, nil, 0, err
	}
	defer m.Close()
	if err := m.SetKVDType(o.kv); err != nil {
		return nil, nil, 0, err
	}
	var rows []meshRow
	var ids [][]int32
	for _, c := range o.ctxs {
		for _, b := range o.batches {
			r, got, err := monoPoint(ctx, m, o, c, b)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("ctx %d batch %d: %w", c, b, err)
			}
			r.Backend, r.Groups, r.Steps = be.Name(), o.groups, o.steps
			r.KV, r.Act = strings.ToLower(o.kv.String()), strings.ToLower(o.act.String())
			br := benchRow{Ctx: c, Batch: b, MedianMs: r.MonoMs, PerLayer: r.perLayer, block: o.blockLen}
			if err := br.setFloor(m.Cfg, o.kv, rate); err != nil {
				return nil, nil, 0, err
			}
			r.Touched, r.ReadGB, r.FloorMs = br.Touched, br.ReadGB, br.FloorMs
			fmt.Fprintf(os.Stderr, "  monolith ctx %d batch %d: %.2f ms (graph %.2f ms)\n", c, b, r.MonoMs, r.MonoGraphMs)
			rows = append(rows, r)
			ids = append(ids, got)
		}
	}
	return rows, ids, rate, nil
}

// monoPoint prefills batch sequences of ctxLen positions and times their block step.
func monoPoint(ctx context.Context, m *model.Model, o meshOpts, ctxLen, batch int) (meshRow, []int32, error) {
	seqs := make([]model.StepSeq, batch)
	for i := range seqs {
		c, err := m.NewCache(ctxLen + o.blockLen)
		if err != nil {
			return meshRow{}, nil, err
		}
		defer c.Free()
		seqs[i] = model.StepSeq{Cache: c}
	}
	// Prefill one sequence and 512 positions at a time, as a prompt would be.
	for i := range seqs {
		for lo := 0; lo < ctxLen; lo += 512 {
			hi := min(lo+512, ctxLen)
			pre := []model.StepSeq{{Cache: seqs[i].Cache, Pos: lo, Tokens: seqTokens(i, lo, hi, m.Cfg.Vocab), OutRows: 1, TopK: 1}}
			if _, err := m.Step(ctx, pre, o.blockLen, model.StepOptions{}); err != nil {
				return meshRow{}, nil, fmt.Errorf("prefill sequence %d [%d, %d): %w", i, lo, hi, err)
			}
		}
	}
	for i := range seqs {
		seqs[i].Pos, seqs[i].Tokens = ctxLen, seqTokens(i, ctxLen, ctxLen+o.blockLen, m.Cfg.Vocab)
		seqs[i].OutRows, seqs[i].TopK = o.blockLen, 1
	}
	tc := &touchCounter{inner: model.LocalExperts{M: m}, be: m.Be, moe: m.Cfg.MoELayers()}
	outs, err := m.Step(ctx, seqs, o.blockLen, model.StepOptions{Experts: tc})
	if err != nil {
		return meshRow{}, nil, err
	}
	var ids []int32
	for _, out := range outs {
		ids = append(ids, out.IDs...)
	}
	stepMs, err := medianMs(o.steps, o.warmup, func() error {
		_, err := m.Step(ctx, seqs, o.blockLen, model.StepOptions{})
		return err
	})
	if err != nil {
		return meshRow{}, nil, err
	}
	p, err := m.Prepare(seqs, o.blockLen)
	if err != nil {
		return meshRow{}, nil, err
	}
	defer p.Close()
	if _, err := p.Capture(ctx); err != nil {
		return meshRow{}, nil, err
	}
	graphMs, err := medianMs(o.steps, o.warmup, func() error { _, err := p.Run(ctx); return err })
	if err != nil {
		return meshRow{}, nil, err
	}
	return meshRow{Ctx: ctxLen, Batch: batch, MonoMs: stepMs, MonoGraphMs: graphMs, perLayer: tc.counts()}, ids, nil
}

func seqTokens(i, lo, hi, vocab int) []int32 {
	t := make([]int32, hi-lo)
	for p := lo; p < hi; p++ {
		t[p-lo] = benchTok(i, p, vocab)
	}
	return t
}

// medianMs runs f warmup times, then steps times, and returns the median wall time.
func medianMs(steps, warmup int, f func() error) (float64, error) {
	for range warmup {
		if err := f(); err != nil {
			return 0, err
		}
	}
	ms := make([]float64, max(steps, 1))
	for i := range ms {
		t0 := time.Now()
		if err := f(); err != nil {
			return 0, err
		}
		ms[i] = float64(time.Since(t0).Microseconds()) / 1000
	}
	slices.Sort(ms)
	return ms[len(ms)/2], nil
}

// meshThroughServices starts the groups of expertd and one attnd as child processes on the
// checkpoint and backend, and times each point's block step through attnd's Step RPC.
func meshThroughServices(ctx context.Context, o meshOpts, cfg *model.Config, rows []meshRow, mono [][]int32) error {
	exe := o.exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var addrs []string
	per := cfg.Experts / o.groups
	common := []string{"--model", o.dir, "--backend", o.backend, "--listen", "127.0.0.1:0"}
	for g := range o.groups {
		args := append([]string{"expertd", "--experts", fmt.Sprintf("%d-%d", g*per, (g+1)*per-1), "--expert-act", strings.ToLower(o.act.String())}, common...)
		p, err := startChild(ctx, exe, fmt.Sprintf("expertd%d", g), "expertd serving", o.startTimeout, args...)
		if err != nil {
			return err
		}
		defer p.stop()
		addrs = append(addrs, p.addr)
	}
	args := append([]string{"attnd", "--expertd", strings.Join(addrs, ","), "--kv-dtype", strings.ToLower(o.kv.String())}, common...)
	if o.wireBF16 {
		args = append(args, "--wire-bf16")
	}
	at, err := startChild(ctx, exe, "attnd", "attnd serving", o.startTimeout, args...)
	if err != nil {
		return err
	}
	defer at.stop()
	conn, err := services.Dial(at.addr, services.ClientConfig{CallTimeout: 5 * time.Minute})
	if err != nil {
		return err
	}
	defer conn.Close()
	cl := pb.NewAttentionClient(conn)
	if info, err := cl.Info(ctx, &pb.InfoRequest{}); err == nil {
		for _, g := range info.GetGpus() {
			fmt.Fprintf(os.Stderr, "attnd device: backend %s index %d name %q uuid %s memory %d/%d MiB free\n",
				g.GetBackend(), g.GetIndex(), g.GetName(), g.GetUuid(), g.GetMemoryFreeMib(), g.GetMemoryTotalMib())
		}
	}
	for i := range rows {
		if err := meshPoint(ctx, cl, o, cfg.Vocab, &rows[i], mono[i], i); err != nil {
			return fmt.Errorf("ctx %d batch %d: %w", rows[i].Ctx, rows[i].Batch, err)
		}
		fmt.Fprintf(os.Stderr, "  mesh ctx %d batch %d: %.2f ms (attnd %.2f ms)\n", rows[i].Ctx, rows[i].Batch, rows[i].MeshMs, rows[i].AttndMs)
	}
	return nil
}

// meshPoint opens the point's sessions on attnd, prefills them, times the block step and
// compares its argmax ids with the monolith's.
func meshPoint(ctx context.Context, cl pb.AttentionClient, o meshOpts, vocab int, r *meshRow, mono []int32, point int) error {
	ids := make([]string, r.Batch)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%d-%d", point, i)
		if _, err := cl.Open(ctx, &pb.OpenRequest{SessionId: ids[i], Capacity: int32(r.Ctx + o.blockLen), BlockLength: int32(o.blockLen)}); err != nil {
			return err
		}
		defer cl.Close(context.WithoutCancel(ctx), &pb.CloseRequest{SessionId: ids[i]})
	}
	step := func(seqs []int, lo, hi, outRows int) (*pb.StepResponse, error) {
		req := &pb.StepRequest{}
		for _, i := range seqs {
			req.Sessions = append(req.Sessions, &pb.SessionStep{SessionId: ids[i], StartPos: int32(lo), Tokens: seqTokens(i, lo, hi, vocab),
				OutRows: int32(outRows), TopK: 1, InvTemperature: 1})
		}
		return cl.Step(ctx, req)
	}
	all := make([]int, r.Batch)
	for i := range all {
		all[i] = i
		for lo := 0; lo < r.Ctx; lo += 512 {
			if _, err := step([]int{i}, lo, min(lo+512, r.Ctx), 1); err != nil {
				return fmt.Errorf("prefill sequence %d at %d: %w", i, lo, err)
			}
		}
	}
	first, err := step(all, r.Ctx, r.Ctx+o.blockLen, o.blockLen)
	if err != nil {
		return err
	}
	var got []int32
	for _, res := range first.GetResults() {
		v := make([]int32, len(res.GetIds())/4)
		if err := wire.DecodeI32(v, res.GetIds()); err != nil {
			return err
		}
		got = append(got, v...)
	}
	if len(got) != len(mono) {
		return fmt.Errorf("%d argmax ids from the mesh, %d from the monolith", len(got), len(mono))
	}
	eq := 0
	for i := range got {
		if got[i] == mono[i] {
			eq++
		}
	}
	r.ArgmaxEq = float64(eq) / float64(max(len(got), 1))
	var attnd, experts []float64
	r.MeshMs, err = medianMs(o.steps, o.warmup, func() error {
		resp, err := step(all, r.Ctx, r.Ctx+o.blockLen, o.blockLen)
		if err == nil {
			attnd = append(attnd, resp.GetStats().GetMsTotal())
			experts = append(experts, resp.GetStats().GetMsExperts())
		}
		return err
	})
	if err != nil {
		return err
	}
	r.AttndMs, r.ExpertsMsPerLayer = median(attnd[o.warmup:]), median(experts[o.warmup:])
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// child is a service process of bench --mesh.
type child struct {
	name, addr string
	cmd        *exec.Cmd
	done       chan struct{}
}

var loopbackRE = regexp.MustCompile(`127\.0\.0\.1:\d+`)

// startChild runs exe args, forwards its stderr prefixed with name, and returns once a line
// contains ready, taking the first loopback address printed so far as the child's address.
func startChild(ctx context.Context, exe, name, ready string, timeout time.Duration, args ...string) (*child, error) {
	cmd := exec.Command(exe, args...)
	cmd.Stdout = os.Stderr
	pr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	readyc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		addr, sent := "", false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintf(os.Stderr, "  [%s] %s\n", name, line)
			if addr == "" {
				addr = loopbackRE.FindString(line)
			}
			if !sent && strings.Contains(line, ready) {
				readyc <- addr
				sent = true
			}
		}
		_ = cmd.Wait()
		close(c.done)
	}()
	select {
	case c.addr = <-readyc:
		if c.addr == "" {
			c.stop()
			return nil, fmt.Errorf("%s: ready without a loopback address", name)
		}
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited before serving (%v)", name, cmd.ProcessState)
	case <-time.After(timeout):
		c.stop()
		return nil, fmt.Errorf("%s: not serving after %v", name, timeout)
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
}

// stop sends SIGTERM and waits up to 20 s, then kills.
func (c *child) stop() {
	if c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}
