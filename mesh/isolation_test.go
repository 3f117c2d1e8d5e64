package mesh_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// TestMeshPoisonedRequestIsolated: poisoned requests sent among 8 concurrent good ones (a top_k
// attnd cannot serve with temperature 1, a prompt holding <|mask|>, a prompt over the byte bound)
// are refused with InvalidArgument naming the field, and the 8 good ones (short, so that -race
// can afford them) complete with exactly the in-process engine's tokens.
func TestMeshPoisonedRequestIsolated(t *testing.T) {
	m := sharedMesh(t)
	c := dialGateway(t, m)
	eng, tok := localEngine(t)
	poisons := []struct {
		req   *pb.GenerateRequest
		field string
	}{
		{&pb.GenerateRequest{RequestId: "poison-topk", Input: &pb.GenerateRequest_Prompt{Prompt: "func Reverse(s string) string {"},
			Params: &pb.DecodeParams{Temperature: 1, TopK: 5000}}, "top_k 5000"},
		{&pb.GenerateRequest{RequestId: "poison-mask", Input: &pb.GenerateRequest_Prompt{Prompt: "func <|mask|> Reverse"}}, "mask token"},
		{&pb.GenerateRequest{RequestId: "poison-bytes", Input: &pb.GenerateRequest_Prompt{Prompt: strings.Repeat("a", 1<<20+1)}}, "max_prompt_bytes"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var good []*pb.GenerateRequest
	for i := range 8 {
		good = append(good, shortRequest([]string{"q", "s", "v20"}[i%3], int32(16+8*(i%3)), int32([]int{32, 16}[i%2]), fmt.Sprint("good-", i)))
	}
	got := make([]*streamed, len(good))
	errs := make([]error, len(good))
	perrs := make([]error, len(poisons))
	var wg sync.WaitGroup
	for i, gc := range good {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = generate(ctx, c, gc)
		}()
		if i%3 == 1 && i/3 < len(poisons) { // the poisons arrive while the good ones run
			k := i / 3
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, perrs[k] = generate(ctx, c, poisons[k].req)
			}()
		}
	}
	wg.Wait()
	for k, p := range poisons {
		if status.Code(perrs[k]) != codes.InvalidArgument || !strings.Contains(perrs[k].Error(), p.field) {
			t.Errorf("%s: %v, want InvalidArgument naming %q", p.req.GetRequestId(), perrs[k], p.field)
		}
	}
	for i, gc := range good {
		t.Run(fmt.Sprint("good-case", i), func(t *testing.T) {
			if errs[i] != nil {
				t.Fatalf("a good request failed: %v", errs[i])
			}
			want, _ := engineResult(t, eng, tok, gc)
			if fmt.Sprint(got[i].final.GetTokenIds()) != fmt.Sprint(want) || len(want) == 0 {
				t.Errorf("mesh %v, engine %v", got[i].final.GetTokenIds(), want)
			}
		})
	}
}
