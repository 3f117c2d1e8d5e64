package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/mesh"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// TestMetricsEndpoint serves the collectors of a running embedded mesh and scrapes them after one
// generation: attnd counted its steps, each expertd its Compute calls, the gateway's gauges are
// there, and the Go runtime's metrics too.
func TestMetricsEndpoint(t *testing.T) {
	d, err := resolveModelDir("")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := mesh.Up(ctx, mesh.Config{ModelDir: d, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cs := gatewayMetrics(m.Gateway)
	cs = append(cs, attndMetrics(m.Attnd))
	for i, e := range m.Experts {
		cs = append(cs, expertdMetrics(e, fmt.Sprint("expertd-", i)))
	}
	addr, stop, err := listenMetrics("127.0.0.1:0", cs...)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, _, err := listenMetrics(addr); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Errorf("a second endpoint on %s: %v, want an error naming --metrics-listen", addr, err)
	}
	c, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Generate(ctx, &pb.GenerateRequest{RequestId: "m", Input: &pb.GenerateRequest_Prompt{Prompt: "func main() {"},
		Params: &pb.DecodeParams{Mode: "s", GenLength: 8, BlockLength: 8}}, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	text := string(body)
	for _, want := range []string{
		`dlmesh_calls_total{instance="attnd-0",service="attnd"}`,
		`dlmesh_calls_total{instance="expertd-0",service="expertd"}`,
		`dlmesh_call_latency_seconds{instance="expertd-1",quantile="0.99",service="expertd"}`,
		`dlmesh_kv_capacity_tokens{instance="attnd-0",service="attnd"}`,
		`dlmesh_requests_queued{instance="gateway-0",service="gateway"}`,
		`go_goroutines`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(text, `dlmesh_calls_total{instance="attnd-0",service="attnd"} 0`) {
		t.Error("attnd counted no step after a generation")
	}
}
