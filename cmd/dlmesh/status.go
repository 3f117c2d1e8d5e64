package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

func init() { extraCommands = append(extraCommands, statusCmd) }

// defaultStatusTimeout bounds each instance's Info call in `dlmesh status`.
const defaultStatusTimeout = 2 * time.Second

// statusEntry is one registered instance and what its Info call said.
type statusEntry struct {
	kind   string
	svc    *api.AgentService
	health string
	load   *pb.LoadStats
	err    error // the Info call's error
}

func statusCmd() *cobra.Command {
	var addr, token, dir string
	var timeout time.Duration
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "status [--consul ADDR]",
		Short: "List the mesh as Consul sees it: services, health, devices, load, expert coverage",
		Long: `Lists every dlmesh instance registered in Consul with its health, expert set and device,
then the load each attnd and expertd reports through its Info call: calls in flight, calls
answered and failed since start, p50/p99 latency over the last minute (Attention.Step for attnd,
Experts.Compute for expertd), and for attnd the open sessions and the KV cache positions they
hold, reserve and may reserve at most (--max-sessions, --max-kv-tokens). An instance that does not answer within --timeout shows as unreachable.
Then the hottest experts (tokens the attnd instances routed to each since they started, summed
over the MoE layers) and the rows sent to each expert group: which group to scale. Last, the
expert coverage of the passing expertd instances.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				return fmt.Errorf("--consul: give the Consul agent address (or set CONSUL_HTTP_ADDR)")
			}
			if timeout <= 0 {
				return fmt.Errorf("--timeout %v: want a positive duration", timeout)
			}
			reg, err := services.NewConsulRegistry(services.ConsulConfig{Addr: addr, Token: token})
			if err != nil {
				return err
			}
			c := reg.Client()
			var entries []*statusEntry
			covered := map[int]int{} // expert → passing replicas
			for _, kind := range []string{services.KindGateway, services.KindAttnd, services.KindExpertd} {
				list, _, err := c.Health().Service(services.ServicePrefix+kind, "", false, (&api.QueryOptions{}).WithContext(cmd.Context()))
				if err != nil {
					return fmt.Errorf("consul: %w", err)
				}
				sort.Slice(list, func(i, j int) bool { return list[i].Service.ID < list[j].Service.ID })
				for _, e := range list {
					h := e.Checks.AggregatedStatus()
					if kind == services.KindExpertd && h == api.HealthPassing {
						if ids, err := model.ParseExperts(e.Service.Meta["experts"]); err == nil {
							for _, id := range ids {
								covered[id]++
							}
						}
					}
					entries = append(entries, &statusEntry{kind: kind, svc: e.Service, health: h})
				}
			}
			ccfg, err := tf.client()
			if err != nil {
				return err
			}
			queryLoads(cmd.Context(), entries, ccfg, timeout)
			out := cmd.OutOrStdout()
			if err := writeStatus(out, entries); err != nil {
				return err
			}
			d, err := resolveModelDir(dir)
			if err != nil {
				return nil // no model to compare coverage against
			}
			cfg, err := model.LoadConfig(d)
			if err != nil {
				return err
			}
			var missing []string
			least := -1
			for e := 0; e < cfg.Experts; e++ {
				if covered[e] == 0 {
					missing = append(missing, fmt.Sprint(e))
				}
				if least < 0 || covered[e] < least {
					least = covered[e]
				}
			}
			fmt.Fprintf(out, "\ncoverage of %s (%d experts in each of MoE layers %d-%d): ", d, cfg.Experts, cfg.FirstKDense, cfg.Layers-1)
			if len(missing) == 0 {
				fmt.Fprintf(out, "complete, at least %d passing replica(s) per expert\n", least)
			} else {
				fmt.Fprintf(out, "MISSING experts %s (attnd is NOT_SERVING unless run with --allow-missing-experts)\n", strings.Join(missing, ","))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "consul", os.Getenv("CONSUL_HTTP_ADDR"), "Consul agent address (default $CONSUL_HTTP_ADDR)")
	cmd.Flags().StringVar(&token, "consul-token", "", "Consul ACL token (default $CONSUL_HTTP_TOKEN)")
	cmd.Flags().StringVar(&dir, "model", "", "model whose expert count coverage is checked against (default: the bundled model)")
	cmd.Flags().DurationVar(&timeout, "timeout", defaultStatusTimeout, "deadline of each instance's Info call; slower ones show as unreachable")
	tf.register(cmd, false)
	return cmd
}

// queryLoads asks every attnd and expertd entry for its load, all at once, each call within
// timeout.
func queryLoads(ctx context.Context, entries []*statusEntry, ccfg services.ClientConfig, timeout time.Duration) {
	var wg sync.WaitGroup
	for _, e := range entries {
		if e.kind != services.KindAttnd && e.kind != services.KindExpertd {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.load, e.err = instanceLoad(ctx, e.kind, fmt.Sprintf("%s:%d", e.svc.Address, e.svc.Port), ccfg, timeout)
		}()
	}
	wg.Wait()
}

// instanceLoad calls Info on one attnd or expertd.
func instanceLoad(ctx context.Context, kind, addr string, ccfg services.ClientConfig, timeout time.Duration) (*pb.LoadStats, error) {
	cc, err := services.Dial(addr, ccfg)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if kind == services.KindAttnd {
		info, err := pb.NewAttentionClient(cc).Info(ctx, &pb.InfoRequest{})
		return info.GetLoad(), err
	}
	info, err := pb.NewExpertsClient(cc).Info(ctx, &pb.InfoRequest{})
	return info.GetLoad(), err
}

// writeStatus prints the instance table, then the load table.
func writeStatus(out io.Writer, entries []*statusEntry) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "kind\tid\taddress\thealth\texperts\tdevice\tfingerprint")
	for _, e := range entries {
		s := e.svc
		fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s\t%s\t%s\t%s\n", e.kind, s.ID, s.Address, s.Port, e.health, dash(s.Meta["experts"]),
			services.DeviceString(s.Meta), dash(s.Meta["fingerprint"]))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	window, n := int32(0), 0
	for _, e := range entries {
		if e.kind == services.KindAttnd || e.kind == services.KindExpertd {
			window, n = max(window, e.load.GetWindowS()), n+1
		}
	}
	if n == 0 {
		return nil
	}
	fmt.Fprint(out, "\nload (attnd: Step, expertd: Compute; calls and errors since start")
	if window > 0 {
		fmt.Fprintf(out, ", latency of the calls of the last %d s", window)
	}
	fmt.Fprintln(out, "):")
	fmt.Fprintln(tw, "id\tstate\tin-flight\tcalls\terrors\tp50 ms\tp99 ms\tsessions/max\tkv held/reserved/max\t")
	for _, e := range entries {
		if e.kind != services.KindAttnd && e.kind != services.KindExpertd {
			continue
		}
		fmt.Fprintln(tw, e.svc.ID+"\t"+strings.Join(loadCells(e), "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeHot(out, entries, hottestShown)
}

// hottestShown is how many experts `dlmesh status` lists as the hottest.
const hottestShown = 5

// writeHot prints the n experts the attnd instances routed most tokens to (summed over the
// answering attnd and the MoE layers, since each started) and every expert group's rows: the
// numbers behind dlmesh_expert_tokens_total and dlmesh_group_tokens_total, to decide which group
// to scale.
func writeHot(out io.Writer, entries []*statusEntry, n int) error {
	experts, groups := map[int32]int64{}, map[string]int64{}
	var total, rows int64
	for _, e := range entries {
		if e.kind != services.KindAttnd || e.err != nil {
			continue
		}
		for id, c := range e.load.GetExpertTokens() {
			experts[id] += c
			total += c
		}
		for g, c := range e.load.GetGroupTokens() {
			groups[g] += c
			rows += c
		}
	}
	if total == 0 {
		return nil
	}
	ids := make([]int32, 0, len(experts))
	for id := range experts {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		if experts[ids[i]] != experts[ids[j]] {
			return experts[ids[i]] > experts[ids[j]]
		}
		return ids[i] < ids[j]
	})
	pct := func(c, of int64) string { return fmt.Sprintf("%.1f%%", 100*float64(c)/float64(of)) }
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(out, "\nhottest experts (tokens routed since start, over the attnd and MoE layers; %d in all):\n", total)
	fmt.Fprintln(tw, "expert\ttokens\tshare\t")
	for _, id := range ids[:min(n, len(ids))] {
		fmt.Fprintf(tw, "%d\t%d\t%s\t\n", id, experts[id], pct(experts[id], total))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	keys := make([]string, 0, len(groups))
	for g := range groups {
		keys = append(keys, g)
	}
	sort.Slice(keys, func(i, j int) bool {
		if groups[keys[i]] != groups[keys[j]] {
			return groups[keys[i]] > groups[keys[j]]
		}
		return keys[i] < keys[j]
	})
	fmt.Fprintf(out, "\nexpert groups (rows sent since start; %d in all):\n", rows)
	fmt.Fprintln(tw, "group\trows\tshare\t")
	for _, g := range keys {
		fmt.Fprintf(tw, "%s\t%d\t%s\t\n", g, groups[g], pct(groups[g], rows))
	}
	return tw.Flush()
}

// loadCells are the load columns of one entry: "ok" and its readings, or "unreachable" (no
// answer within the timeout, or no connection) or "error", dashes and why (after the last tab, so a long reason does not widen the table).
func loadCells(e *statusEntry) []string {
	if e.err != nil {
		st := status.Convert(e.err)
		state := "error" // it answered, but not with its load
		if c := st.Code(); c == codes.Unavailable || c == codes.DeadlineExceeded {
			state = "unreachable"
		}
		return []string{state, "-", "-", "-", "-", "-", "-", "-", fmt.Sprintf("(%s: %s)", st.Code(), firstLine(st.Message()))}
	}
	l := e.load
	ms := func(v float64) string {
		if l.GetWindowCalls() == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", v)
	}
	cells := []string{"ok", fmt.Sprint(l.GetInFlight()), fmt.Sprint(l.GetCalls()), fmt.Sprint(l.GetErrors()), ms(l.GetP50Ms()), ms(l.GetP99Ms())}
	if e.kind == services.KindAttnd {
		sessions, kv := fmt.Sprint(l.GetSessions()), fmt.Sprintf("%d/%d", l.GetKvTokens(), l.GetKvCapacityTokens())
		if l.GetMaxSessions() > 0 { // the admission limits, from attnd versions that report them
			sessions += fmt.Sprintf("/%d", l.GetMaxSessions())
			kv += fmt.Sprintf("/%d", l.GetMaxKvTokens())
		}
		return append(cells, sessions, kv, "")
	}
	return append(cells, "-", "-", "")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
