package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

func init() { extraCommands = append(extraCommands, soakCmd) }

// soakReport is what `dlmesh soak` measures.
type soakReport struct {
	Streams    int            `json:"streams"`
	DurationS  float64        `json:"duration_s"`
	Completed  int            `json:"completed"`
	Failed     map[string]int `json:"failed_by_code"`
	P50Ms      float64        `json:"p50_ms"`
	P99Ms      float64        `json:"p99_ms"`
	FirstP50Ms float64        `json:"first_event_p50_ms"`
	FirstP99Ms float64        `json:"first_event_p99_ms"`
	PerSecond  float64        `json:"requests_per_s"`
	Processes  []soakProc     `json:"processes"`
	// AttndSessions and AttndKVTokens are what attnd holds --settle after the load (0 and 0
	// unless a request leaked its session).
	AttndSessions int32    `json:"attnd_sessions_after"`
	AttndKVTokens int64    `json:"attnd_kv_capacity_tokens_after"`
	FirstErrors   []string `json:"first_errors,omitempty"`
}

// soakProc is one process's resident memory before and after the load.
type soakProc struct {
	Name        string  `json:"name"`
	PID         int     `json:"pid"`
	RSSStartKiB int     `json:"rss_start_kib"`
	RSSPeakKiB  int     `json:"rss_peak_kib"`
	RSSEndKiB   int     `json:"rss_end_kib"`
	EndVsStart  float64 `json:"end_vs_start"`
}

func soakCmd() *cobra.Command {
	var (
		dir, bin, prompt, mode string
		streams, gen           int
		duration, settle       time.Duration
		drain, idleTrim        time.Duration
		asJSON                 bool
	)
	cmd := &cobra.Command{
		Use:   "soak [--streams 64] [--duration 60s] [--gen 32]",
		Short: "Load a mesh of separate processes with concurrent streams and report failures, latency and memory",
		Long: `Starts the mesh as separate processes of this binary on loopback ports (two expertd, experts
split in halves, one attnd, one gateway), then runs --streams concurrent Generate loops for
--duration. It reports the requests completed, the failures by gRPC code, the p50/p99 latency
of a request and of its first event, and every process's VmRSS (/proc) before the load, at its
peak and --settle after it. The load stops by itself; in-flight requests get --drain to
finish (then they fail with DeadlineExceeded); the processes are stopped (SIGTERM) at the end, or killed with this one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if streams < 1 || streams > 4096 {
				return fmt.Errorf("--streams %d: want 1 to 4096", streams)
			}
			if duration <= 0 || duration > 24*time.Hour {
				return fmt.Errorf("--duration %v: want (0, 24h]", duration)
			}
			if bin == "" {
				var err error
				if bin, err = os.Executable(); err != nil {
					return err
				}
			}
			d, err := resolveModelDir(dir)
			if err != nil {
				return err
			}
			ctx, stop := services.SignalContext(cmd.Context())
			defer stop()
			procs, err := startSoakMesh(ctx, bin, d, idleTrim)
			defer func() {
				for i := len(procs) - 1; i >= 0; i-- {
					procs[i].stop()
				}
			}()
			if err != nil {
				return err
			}
			gw := procs[len(procs)-1].addr
			if drain <= 0 {
				return fmt.Errorf("--drain %v: want > 0", drain)
			}
			rep, err := runSoak(ctx, gw, procs, streams, duration, settle, drain, &pb.GenerateRequest{
				Input: &pb.GenerateRequest_Prompt{Prompt: prompt}, Params: &pb.DecodeParams{Mode: mode, GenLength: int32(gen)}})
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
			}
			return writeSoak(cmd.OutOrStdout(), rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "model", "", "model directory (default: the bundled llada2-tiny-go)")
	f.StringVar(&bin, "bin", "", "dlmesh binary to start the services from (default: this one)")
	f.IntVar(&streams, "streams", 64, "concurrent streams")
	f.DurationVar(&duration, "duration", 60*time.Second, "how long new requests are started")
	f.DurationVar(&drain, "drain", 2*time.Minute, "how long requests in flight at the end of --duration may take to finish")
	f.DurationVar(&settle, "settle", 10*time.Second, "wait after the load before the last memory reading")
	f.DurationVar(&idleTrim, "idle-trim", services.DefaultIdleTrim, "--idle-trim of every service (negative: never return freed memory early)")
	f.IntVar(&gen, "gen", 32, "gen_length of every request")
	f.StringVar(&mode, "mode", "q", "decoding mode of every request")
	f.StringVar(&prompt, "prompt", "func Reverse(s string) string {", "prompt of every request")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// soakChild is one service process of the soak mesh.
type soakChild struct {
	name, addr string
	cmd        *exec.Cmd
	done       chan struct{}
}

// stop sends SIGTERM and kills the process after 15 s.
func (c *soakChild) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

var loopbackAddrRE = regexp.MustCompile(`127\.0\.0\.1:\d+`)

// startSoakMesh starts expertd 0-7 and 8-15 (for the tiny model's 16 experts), attnd and the
// gateway, each on a free loopback port with --idle-trim idleTrim, and returns them in that
// order (gateway last) once each said it serves. The children die with this process (Pdeathsig).
func startSoakMesh(ctx context.Context, bin, dir string, idleTrim time.Duration) ([]*soakChild, error) {
	var procs []*soakChild
	start := func(ready string, args ...string) (*soakChild, error) {
		c, err := startSoakChild(ctx, bin, ready, append(args, "--model", dir, "--idle-trim", idleTrim.String())...)
		if c != nil {
			procs = append(procs, c)
		}
		return c, err
	}
	mc, err := model.LoadConfig(dir)
	if err != nil {
		return procs, err
	}
	nExperts := mc.Experts
	if nExperts < 2 {
		return procs, fmt.Errorf("soak: model %s has %d experts: want at least 2 to split in two groups", dir, nExperts)
	}
	half := nExperts / 2
	e0, err := start("expertd serving", "expertd", "--experts", fmt.Sprintf("0-%d", half-1))
	if err != nil {
		return procs, err
	}
	e1, err := start("expertd serving", "expertd", "--experts", fmt.Sprintf("%d-%d", half, nExperts-1))
	if err != nil {
		return procs, err
	}
	at, err := start("attnd serving", "attnd", "--expertd", e0.addr+","+e1.addr)
	if err != nil {
		return procs, err
	}
	_, err = start("gateway serving", "gateway", "--attnd", at.addr, "--listen", "127.0.0.1:0")
	return procs, err
}

func startSoakChild(ctx context.Context, bin, ready string, args ...string) (*soakChild, error) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("soak: start %s: %w", args[0], err)
	}
	c := &soakChild{name: args[0], cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		close(lines)
	}()
	go func() { _ = cmd.Wait(); close(c.done) }()
	deadline := time.After(2 * time.Minute)
	var seen []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return c, fmt.Errorf("soak: %s exited before serving:\n%s", args[0], strings.Join(seen, "\n"))
			}
			seen = append(seen, l)
			if c.addr == "" {
				c.addr = loopbackAddrRE.FindString(l)
			}
			if strings.Contains(l, ready) && c.addr != "" {
				if args[0] == "expertd" {
					c.name = "expertd " + args[2]
				}
				return c, nil
			}
		case <-deadline:
			return c, fmt.Errorf("soak: %s not serving after 2 minutes:\n%s", args[0], strings.Join(seen, "\n"))
		case <-ctx.Done():
			return c, ctx.Err()
		}
	}
}

// runSoak runs streams Generate loops against the gateway at addr for d and reads the
// processes' memory before, during and settle after the load.
func runSoak(ctx context.Context, addr string, procs []*soakChild, streams int, d, settle, drain time.Duration, req *pb.GenerateRequest) (*soakReport, error) {
	cl, err := gateway.Dial(addr, services.ClientConfig{})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	// one request first: every process has loaded and served once before the baseline
	if _, err := cl.Generate(ctx, req, nil); err != nil {
		return nil, fmt.Errorf("soak: warm-up request: %w", err)
	}
	rep := &soakReport{Streams: streams, Failed: map[string]int{}}
	for _, p := range procs {
		rss := procRSSKiB(p.cmd.Process.Pid)
		rep.Processes = append(rep.Processes, soakProc{Name: p.name, PID: p.cmd.Process.Pid, RSSStartKiB: rss, RSSPeakKiB: rss})
	}
	var (
		mu          sync.Mutex
		lat, first  []float64
		wg          sync.WaitGroup
		loadCtx, lc = context.WithTimeout(ctx, d)
	)
	defer lc()
	// in-flight requests may finish after the load window, within drain
	reqCtx, rc := context.WithTimeout(context.WithoutCancel(ctx), d+drain)
	defer rc()
	t0 := time.Now()
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; loadCtx.Err() == nil; n++ {
				r := &pb.GenerateRequest{RequestId: fmt.Sprintf("soak-%d-%d", i, n), Input: req.Input, Params: req.Params}
				start := time.Now()
				var firstAt time.Duration
				_, err := cl.Generate(reqCtx, r, func(*pb.GenerateEvent) error {
					if firstAt == 0 {
						firstAt = time.Since(start)
					}
					return nil
				})
				took := time.Since(start)
				mu.Lock()
				if err != nil {
					code := status.Code(err).String()
					if errors.Is(err, context.Canceled) {
						code = "Canceled"
					}
					rep.Failed[code]++
					if len(rep.FirstErrors) < 5 {
						rep.FirstErrors = append(rep.FirstErrors, err.Error())
					}
				} else {
					rep.Completed++
					lat = append(lat, float64(took.Microseconds())/1000)
					first = append(first, float64(firstAt.Microseconds())/1000)
				}
				mu.Unlock()
			}
		}()
	}
	sampleDone := make(chan struct{})
	go func() { // the peak, sampled every second during the load
		defer close(sampleDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
				for i, p := range procs {
					rep.Processes[i].RSSPeakKiB = max(rep.Processes[i].RSSPeakKiB, procRSSKiB(p.cmd.Process.Pid))
				}
			}
		}
	}()
	wg.Wait()
	<-sampleDone
	rep.DurationS = time.Since(t0).Seconds()
	rep.PerSecond = float64(rep.Completed) / rep.DurationS
	rep.P50Ms, rep.P99Ms = quantile(lat, 0.5), quantile(lat, 0.99)
	rep.FirstP50Ms, rep.FirstP99Ms = quantile(first, 0.5), quantile(first, 0.99)
	select {
	case <-time.After(settle):
	case <-ctx.Done():
	}
	for _, p := range procs {
		if p.name == "attnd" {
			if err := attndLoadInto(ctx, p.addr, rep); err != nil {
				return nil, err
			}
		}
	}
	for i, p := range procs {
		pr := &rep.Processes[i]
		pr.RSSEndKiB = procRSSKiB(p.cmd.Process.Pid)
		pr.RSSPeakKiB = max(pr.RSSPeakKiB, pr.RSSEndKiB)
		if pr.RSSStartKiB > 0 {
			pr.EndVsStart = float64(pr.RSSEndKiB) / float64(pr.RSSStartKiB)
		}
	}
	return rep, nil
}

// attndLoadInto reads the sessions and KV capacity an attnd holds into rep.
func attndLoadInto(ctx context.Context, addr string, rep *soakReport) error {
	cc, err := services.Dial(addr, services.ClientConfig{})
	if err != nil {
		return err
	}
	defer cc.Close()
	info, err := pb.NewAttentionClient(cc).Info(ctx, &pb.InfoRequest{})
	if err != nil {
		return fmt.Errorf("soak: attnd %s info: %w", addr, err)
	}
	rep.AttndSessions, rep.AttndKVTokens = info.GetLoad().GetSessions(), info.GetLoad().GetKvCapacityTokens()
	return nil
}

// quantile is the q-quantile of v (nearest rank); 0 for no values.
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func writeSoak(w io.Writer, r *soakReport) error {
	fmt.Fprintf(w, "%d streams for %.1f s: %d completed (%.2f/s), failed %v\n", r.Streams, r.DurationS, r.Completed, r.PerSecond, r.Failed)
	fmt.Fprintf(w, "latency p50 %.0f ms, p99 %.0f ms; first event p50 %.0f ms, p99 %.0f ms\n", r.P50Ms, r.P99Ms, r.FirstP50Ms, r.FirstP99Ms)
	fmt.Fprintf(w, "attnd after the load: %d sessions open, %d KV positions reserved\n", r.AttndSessions, r.AttndKVTokens)
	for _, e := range r.FirstErrors {
		fmt.Fprintf(w, "error: %s\n", e)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "process\tpid\tRSS start MiB\tpeak MiB\tend MiB\tend/start")
	for _, p := range r.Processes {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.1f\t%.1f\t%.2f\n", p.Name, p.PID, float64(p.RSSStartKiB)/1024, float64(p.RSSPeakKiB)/1024, float64(p.RSSEndKiB)/1024, p.EndVsStart)
	}
	return tw.Flush()
}

// procRSSKiB is a process's VmRSS from /proc/PID/status (0 where /proc is not available).
func procRSSKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			if f := strings.Fields(l); len(f) > 1 {
				n, _ := strconv.Atoi(f[1])
				return n
			}
		}
	}
	return 0
}
