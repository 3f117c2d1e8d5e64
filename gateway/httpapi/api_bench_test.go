package httpapi_test

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/dlmesh/dlmesh/gateway"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// streamTimes are one streamed request's times from its start.
type streamTimes struct {
	first  time.Duration // the first streamed byte
	text   time.Duration // the first committed text (the first finished block)
	total  time.Duration
	tokens int
}

const benchPrompt = "func Reverse(s string) string {"

// httpStream streams the benchmark request through the HTTP API. Its first byte is the status
// line, sent when the first denoising step has run.
func httpStream(tb testing.TB, addr string) streamTimes {
	var st streamTimes
	t0 := time.Now()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/completions",
		strings.NewReader(`{"prompt":"`+benchPrompt+`","max_tokens":64,"temperature":0,"mode":"s","stream":true,"stream_options":{"include_usage":true}}`))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	st.first = time.Since(t0)
	r := bufio.NewReader(res.Body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		if st.text == 0 && strings.Contains(line, `"text":"`) && !strings.Contains(line, `"text":""`) {
			st.text = time.Since(t0)
		}
		if i := strings.Index(line, `"completion_tokens":`); i >= 0 {
			for _, c := range line[i+len(`"completion_tokens":`):] {
				if c < '0' || c > '9' {
					break
				}
				st.tokens = st.tokens*10 + int(c-'0')
			}
		}
	}
	st.total = time.Since(t0)
	return st
}

// grpcStream streams the same request through gRPC Generate; its first byte is the first step
// event.
func grpcStream(tb testing.TB, gc *gateway.Client) streamTimes {
	var st streamTimes
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+apiKey)
	t0 := time.Now()
	fin, err := gc.Generate(ctx, &pb.GenerateRequest{Input: &pb.GenerateRequest_Prompt{Prompt: benchPrompt},
		Params: &pb.DecodeParams{Mode: "s", GenLength: 64}}, func(ev *pb.GenerateEvent) error {
		if st.first == 0 {
			st.first = time.Since(t0)
		}
		if blk := ev.GetBlock(); blk != nil && blk.GetText() != "" && st.text == 0 {
			st.text = time.Since(t0)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	st.total = time.Since(t0)
	st.tokens = len(fin.GetTokenIds())
	return st
}

// BenchmarkStream streams the same greedy request (64 tokens, speedy mode) through the HTTP API
// and through gRPC Generate on one in-process mesh, alternating the two in each iteration so
// that both see the same load, and reports per protocol the time to the first streamed byte, to
// the first committed text, and the returned tokens per second of the whole request.
//
//	go test -run '^$' -bench Stream -benchtime 5x ./gateway/httpapi
func BenchmarkStream(b *testing.B) {
	m := liveMesh(b)
	gc, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer gc.Close()
	var h, g streamTimes
	add := func(sum *streamTimes, s streamTimes) {
		sum.first, sum.text, sum.total, sum.tokens = sum.first+s.first, sum.text+s.text, sum.total+s.total, sum.tokens+s.tokens
	}
	for b.Loop() {
		add(&h, httpStream(b, m.Addrs().HTTP))
		add(&g, grpcStream(b, gc))
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	b.ReportMetric(ms(h.first), "http-ttfb-ms")
	b.ReportMetric(ms(g.first), "grpc-ttfb-ms")
	b.ReportMetric(ms(h.text), "http-first-text-ms")
	b.ReportMetric(ms(g.text), "grpc-first-text-ms")
	b.ReportMetric(float64(h.tokens)/h.total.Seconds(), "http-tok/s")
	b.ReportMetric(float64(g.tokens)/g.total.Seconds(), "grpc-tok/s")
}
