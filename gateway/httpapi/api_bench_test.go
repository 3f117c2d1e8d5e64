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

// BenchmarkStream streams the same greedy request (64 tokens, speedy mode) through the HTTP API
// and through gRPC Generate on one in-process mesh, and reports the time to the first streamed
// byte (HTTP: the first body byte; gRPC: the first event), to the first committed text, and the
// returned tokens per second of the whole request.
//
//	go test -run '^$' -bench Stream -benchtime 5x ./gateway/httpapi
func BenchmarkStream(b *testing.B) {
	const prompt = "func Reverse(s string) string {"
	m := liveMesh(b)
	b.Run("http", func(b *testing.B) {
		var first, text, total time.Duration
		tokens := 0
		for b.Loop() {
			t0 := time.Now()
			req, _ := http.NewRequest(http.MethodPost, "http://"+m.Addrs().HTTP+"/v1/completions",
				strings.NewReader(`{"prompt":"`+prompt+`","max_tokens":64,"temperature":0,"mode":"s","stream":true,"stream_options":{"include_usage":true}}`))
			req.Header.Set("Authorization", "Bearer "+apiKey)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			r := bufio.NewReader(res.Body)
			if _, err := r.Peek(1); err != nil {
				b.Fatal(err)
			}
			first += time.Since(t0)
			gotText := false
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					break
				}
				if !gotText && strings.Contains(line, `"text":"`) && !strings.Contains(line, `"text":""`) {
					text += time.Since(t0)
					gotText = true
				}
				if i := strings.Index(line, `"completion_tokens":`); i >= 0 {
					var n int
					for _, c := range line[i+len(`"completion_tokens":`):] {
						if c < '0' || c > '9' {
							break
						}
						n = n*10 + int(c-'0')
					}
					tokens += n
				}
			}
			res.Body.Close()
			total += time.Since(t0)
		}
		report(b, first, text, total, tokens)
	})
	b.Run("grpc", func(b *testing.B) {
		gc, err := gateway.Dial(m.Addrs().Gateway, services.ClientConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer gc.Close()
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+apiKey)
		var first, text, total time.Duration
		tokens := 0
		for b.Loop() {
			t0 := time.Now()
			gotFirst, gotText := false, false
			fin, err := gc.Generate(ctx, &pb.GenerateRequest{Input: &pb.GenerateRequest_Prompt{Prompt: prompt},
				Params: &pb.DecodeParams{Mode: "s", GenLength: 64}}, func(ev *pb.GenerateEvent) error {
				if !gotFirst {
					first += time.Since(t0)
					gotFirst = true
				}
				if blk := ev.GetBlock(); blk != nil && blk.GetText() != "" && !gotText {
					text += time.Since(t0)
					gotText = true
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			total += time.Since(t0)
			tokens += len(fin.GetTokenIds())
		}
		report(b, first, text, total, tokens)
	})
}

func report(b *testing.B, first, text, total time.Duration, tokens int) {
	n := float64(b.N)
	b.ReportMetric(float64(first.Microseconds())/1000/n, "ttfb-ms")
	b.ReportMetric(float64(text.Microseconds())/1000/n, "first-text-ms")
	b.ReportMetric(float64(tokens)/total.Seconds(), "tok/s")
}
