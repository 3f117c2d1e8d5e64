package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/mesh"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// scrape fetches and parses http://addr/metrics.
func scrape(tb testing.TB, addr string) map[string]*dto.MetricFamily {
	tb.Helper()
	mfs, err := scrapeURL(http.DefaultClient, "http://"+addr+"/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	return mfs
}

// scrapeURL fetches url with c and parses it as Prometheus text.
func scrapeURL(c *http.Client, url string) (map[string]*dto.MetricFamily, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s does not parse: %w", url, err)
	}
	return mfs, nil
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// series returns the metrics of family name whose labels include want.
func series(mfs map[string]*dto.MetricFamily, name string, want map[string]string) []*dto.Metric {
	var out []*dto.Metric
	for _, m := range mfs[name].GetMetric() {
		ok := true
		for k, v := range want {
			ok = ok && label(m, k) == v
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return m.GetUntyped().GetValue()
}

func sum(ms []*dto.Metric) float64 {
	s := 0.0
	for _, m := range ms {
		s += value(m)
	}
	return s
}

// TestMetricsEndpoint serves the collectors of a running embedded mesh and scrapes them after one
// generation and one refused request: the gateway's request histograms and counters (labelled
// with the model), attnd's routed-token counters (every MoE layer routes each token to top_k
// experts, and the groups get the rows the experts computed), the latency histograms, the load
// gauges kept from before, and the Go runtime's metrics.
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
	cs = append(cs, attndMetrics(m.Attnd)...)
	for i, e := range m.Experts {
		cs = append(cs, expertdMetrics(e, fmt.Sprint("expertd-", i))...)
	}
	addr, stop, err := listenMetrics("127.0.0.1:0", nil, cs...)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, _, err := listenMetrics(addr, nil); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Errorf("a second endpoint on %s: %v, want an error naming --metrics-listen", addr, err)
	}
	c, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	final, err := c.Generate(ctx, &pb.GenerateRequest{RequestId: "m", Input: &pb.GenerateRequest_Prompt{Prompt: "func main() {"},
		Params: &pb.DecodeParams{Mode: "s", GenLength: 8, BlockLength: 8}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Generate(ctx, &pb.GenerateRequest{RequestId: "bad", Input: &pb.GenerateRequest_Prompt{Prompt: ""}}, nil); err == nil {
		t.Fatal("empty prompt accepted")
	}
	mfs := scrape(t, addr)
	u := final.GetUsage()
	model := map[string]string{"model_name": "llada2-tiny-go"}

	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"dlmesh_time_to_first_token_seconds", model, 1},
		{"dlmesh_e2e_request_latency_seconds", model, 1},
		{"dlmesh_tokens_per_forward", model, 1},
		{"dlmesh_denoising_step_seconds", model, float64(u.GetForwards())},
		{"dlmesh_step_unmasked_tokens", model, float64(u.GetForwards())},
		{"dlmesh_step_edited_tokens", model, float64(u.GetForwards())},
		{"dlmesh_prompt_tokens_total", model, float64(u.GetPromptTokens())},
		{"dlmesh_generation_tokens_total", model, float64(u.GetGeneratedTokens())},
		{"dlmesh_request_success_total", map[string]string{"model_name": "llada2-tiny-go", "finished_reason": final.GetFinishReason()}, 1},
		{"dlmesh_request_failure_total", map[string]string{"model_name": "llada2-tiny-go", "code": "InvalidArgument"}, 1},
		{"dlmesh_num_requests_running", model, 0},
		{"dlmesh_num_requests_waiting", model, 0},
		{"dlmesh_requests_queued", map[string]string{"service": "gateway"}, 0},
		{"dlmesh_call_latency_seconds", map[string]string{"instance": "attnd-0"}, sum(series(mfs, "dlmesh_calls_total", map[string]string{"instance": "attnd-0"}))},
		{"dlmesh_call_latency_seconds", map[string]string{"instance": "expertd-1"}, sum(series(mfs, "dlmesh_calls_total", map[string]string{"instance": "expertd-1"}))},
	} {
		ms := series(mfs, tc.name, tc.labels)
		if len(ms) == 0 {
			t.Errorf("/metrics lacks %s%v", tc.name, tc.labels)
			continue
		}
		if got := sum(ms); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if n := sum(series(mfs, "dlmesh_calls_total", map[string]string{"instance": "attnd-0"})); n == 0 {
		t.Error("attnd counted no step after a generation")
	}
	for _, name := range []string{"dlmesh_kv_tokens", "dlmesh_kv_capacity_tokens", "dlmesh_sessions", "dlmesh_call_latency_window_seconds", "go_goroutines"} {
		if len(mfs[name].GetMetric()) == 0 {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if mf := mfs["dlmesh_time_to_first_token_seconds"]; mf.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("time to first token is a %v, want a histogram", mf.GetType())
	}

	// Routing: per MoE layer, every token fed chose top_k experts, so the layers' sums agree and
	// divide by top_k; the groups got every routed row once, and the expertd computed them all.
	perLayer := map[string]float64{}
	for _, mt := range mfs["dlmesh_expert_tokens_total"].GetMetric() {
		perLayer[label(mt, "layer")] += value(mt)
	}
	const topK = 4 // llada2-tiny-go
	var first float64
	for layer, n := range perLayer {
		if first == 0 {
			first = n
		}
		if n == 0 || n != first || int(n)%topK != 0 {
			t.Errorf("layer %s routed %v tokens (another %v): want the same positive multiple of %d in every MoE layer", layer, n, first, topK)
		}
	}
	if len(perLayer) == 0 || len(series(mfs, "dlmesh_expert_tokens_total", map[string]string{"expert": "15"})) == 0 {
		t.Errorf("dlmesh_expert_tokens_total: layers %v, want every MoE layer and experts 0..15", perLayer)
	}
	groups := sum(series(mfs, "dlmesh_group_tokens_total", nil))
	rows := sum(series(mfs, "dlmesh_expert_rows_total", nil))
	if groups == 0 || groups != rows {
		t.Errorf("groups were sent %v rows, the expertd computed %v", groups, rows)
	}
	if len(series(mfs, "dlmesh_expert_fanout_seconds", nil)) != len(perLayer) {
		t.Errorf("%d fan-out histograms for %d MoE layers", len(series(mfs, "dlmesh_expert_fanout_seconds", nil)), len(perLayer))
	}
	if n := sum(series(mfs, "dlmesh_expert_compute_seconds", nil)); n != sum(series(mfs, "dlmesh_calls_total", map[string]string{"service": "expertd"})) {
		t.Errorf("%v expert compute observations, want one per Compute call", n)
	}
}
