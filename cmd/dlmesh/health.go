package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/dlmesh/dlmesh/services"
)

func init() { extraCommands = append(extraCommands, healthCmd) }

// errNotServing is what health returns for a reachable server that is not SERVING.
var errNotServing = errors.New("not serving")

// healthCmd asks one server's grpc.health.v1 status: the container healthcheck of images that
// have no shell (deploy/compose.yaml runs it in distroless containers).
func healthCmd() *cobra.Command {
	var addr, service string
	var timeout time.Duration
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "health --addr HOST:PORT [--service NAME]",
		Short: "Exit 0 when a gateway, attnd or expertd reports SERVING on grpc.health.v1, else 1",
		Long: `Calls grpc.health.v1.Health/Check on --addr and prints the status. The overall status ("", the
default) is SERVING once the server takes work: an attnd when every expert has a healthy replica,
an expertd when its weights are resident. --service dlmesh.liveness asks whether the process is
up at all (SERVING until it stops).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				return errors.New("--addr: want HOST:PORT of a dlmesh server")
			}
			if timeout <= 0 {
				return fmt.Errorf("--timeout %s: want > 0", timeout)
			}
			ccfg, err := tf.client()
			if err != nil {
				return err
			}
			cc, err := services.Dial(addr, ccfg)
			if err != nil {
				return err
			}
			defer cc.Close()
			ctx, cancel := services.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err != nil {
				return fmt.Errorf("health %s %q: %w", addr, service, err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetStatus())
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("health %s %q: %w (%s)", addr, service, errNotServing, resp.GetStatus())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "server address HOST:PORT")
	f.StringVar(&service, "service", "", `health service name ("" is the server's overall status)`)
	f.DurationVar(&timeout, "timeout", 2*time.Second, "deadline of the check")
	tf.register(cmd, false)
	return cmd
}
