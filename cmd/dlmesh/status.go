package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/model"
	"github.com/dlmesh/dlmesh/services"
)

func init() { extraCommands = append(extraCommands, statusCmd) }

func statusCmd() *cobra.Command {
	var addr, token, dir string
	cmd := &cobra.Command{
		Use:   "status [--consul ADDR]",
		Short: "List the mesh as Consul sees it: services, health, expert coverage",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				return fmt.Errorf("--consul: give the Consul agent address (or set CONSUL_HTTP_ADDR)")
			}
			reg, err := services.NewConsulRegistry(services.ConsulConfig{Addr: addr, Token: token})
			if err != nil {
				return err
			}
			c := reg.Client()
			out := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "kind\tid\taddress\thealth\texperts\tfingerprint")
			covered := map[int]int{} // expert → passing replicas
			for _, kind := range []string{services.KindGateway, services.KindAttnd, services.KindExpertd} {
				entries, _, err := c.Health().Service(services.ServicePrefix+kind, "", false, nil)
				if err != nil {
					return fmt.Errorf("consul: %w", err)
				}
				sort.Slice(entries, func(i, j int) bool { return entries[i].Service.ID < entries[j].Service.ID })
				for _, e := range entries {
					h := e.Checks.AggregatedStatus()
					ex := e.Service.Meta["experts"]
					if kind == services.KindExpertd && h == api.HealthPassing {
						if ids, err := expertd.ParseExperts(ex); err == nil {
							for _, id := range ids {
								covered[id]++
							}
						}
					}
					fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%s\t%s\t%s\n", kind, e.Service.ID, e.Service.Address, e.Service.Port, h, ex, e.Service.Meta["fingerprint"])
				}
			}
			if err := tw.Flush(); err != nil {
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
			min := -1
			for e := 0; e < cfg.Experts; e++ {
				if covered[e] == 0 {
					missing = append(missing, fmt.Sprint(e))
				}
				if min < 0 || covered[e] < min {
					min = covered[e]
				}
			}
			fmt.Fprintf(out, "\ncoverage of %s (%d experts in each of MoE layers %d-%d): ", d, cfg.Experts, cfg.FirstKDense, cfg.Layers-1)
			if len(missing) == 0 {
				fmt.Fprintf(out, "complete, at least %d passing replica(s) per expert\n", min)
			} else {
				fmt.Fprintf(out, "MISSING experts %s (attnd stays NOT_SERVING)\n", strings.Join(missing, ","))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "consul", os.Getenv("CONSUL_HTTP_ADDR"), "Consul agent address (default $CONSUL_HTTP_ADDR)")
	cmd.Flags().StringVar(&token, "consul-token", "", "Consul ACL token (default $CONSUL_HTTP_TOKEN)")
	cmd.Flags().StringVar(&dir, "model", "", "model whose expert count coverage is checked against (default: the bundled model)")
	return cmd
}
