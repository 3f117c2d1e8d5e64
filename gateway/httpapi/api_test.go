package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/internal/meshtest"
	"github.com/dlmesh/dlmesh/mesh"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tokenizer"
)

const (
	tinyDir = "../../models/llada2-tiny-go"
	apiKey  = "sk-test-dlmesh"
	model   = "llada2-tiny-go"
)

// shared is the live mesh every test here talks to: an in-process mesh.Up with the HTTP API on a
// loopback port and an API key.
var shared = meshtest.New(mesh.Config{ModelDir: tinyDir, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", APIKey: apiKey})

func liveMesh(tb testing.TB) *mesh.Mesh { tb.Helper(); return shared.Mesh(tb) }

func TestMain(m *testing.M) { meshtest.Main(m, false, shared) }

func client(tb testing.TB, opts ...option.RequestOption) openai.Client {
	tb.Helper()
	m := liveMesh(tb)
	base := []option.RequestOption{option.WithBaseURL("http://" + m.Addrs().HTTP + "/v1/"), option.WithAPIKey(apiKey), option.WithMaxRetries(0)}
	return openai.NewClient(append(base, opts...)...)
}

// The generation fixtures of the float32 reference.
type genCase struct {
	Prompt    string  `json:"prompt"`
	PromptIDs []int32 `json:"prompt_ids"`
	Mode      string  `json:"mode"`
	GenLength int     `json:"gen_length"`
	IDs       []int32 `json:"ids"`
}

func loadCases(tb testing.TB) []genCase {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "llada2-tiny-go", "generate_cases.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var f struct{ Cases []genCase }
	if err := json.Unmarshal(b, &f); err != nil {
		tb.Fatal(err)
	}
	if len(f.Cases) != 9 {
		tb.Fatalf("want 9 cases, got %d", len(f.Cases))
	}
	return f.Cases
}

var tinyTok = sync.OnceValues(func() (*tokenizer.Tokenizer, error) { return tokenizer.Load(tinyDir) })

// cutText is the text of the fixture's ids cut at n tokens (the fixture holds the whole window),
// decoded without special tokens.
func cutText(tb testing.TB, ids []int32, n int) string {
	tb.Helper()
	tok, err := tinyTok()
	if err != nil {
		tb.Fatal(err)
	}
	var plain []int32
	for _, id := range ids[:min(n, len(ids))] {
		if !tok.IsSpecial(id) {
			plain = append(plain, id)
		}
	}
	return tok.Decode(plain)
}

func TestModels(t *testing.T) {
	c := client(t)
	page, err := c.Models.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != model || page.Data[0].OwnedBy != "dlmesh" {
		t.Fatalf("models %+v", page.Data)
	}
	if _, err := c.Models.Get(context.Background(), "gpt-4o"); apiStatus(err) != http.StatusNotFound {
		t.Fatalf("unknown model: %v", err)
	}
}

// Greedy completions of the fixture prompts, with the fixture's mode through the extras, equal
// the reference's outputs cut at max_tokens.
func TestCompletionsMatchReference(t *testing.T) {
	c := client(t)
	for i, tc := range loadCases(t) {
		t.Run(fmt.Sprintf("%d-%s", i/3, tc.Mode), func(t *testing.T) {
			params := openai.CompletionNewParams{Model: model, MaxTokens: openai.Int(int64(tc.GenLength)), Temperature: openai.Float(0),
				Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(tc.Prompt)}}
			if i%2 == 1 { // the same prompt as token ids
				ids := make([]int64, len(tc.PromptIDs))
				for j, id := range tc.PromptIDs {
					ids[j] = int64(id)
				}
				params.Prompt = openai.CompletionNewParamsPromptUnion{OfArrayOfTokens: ids}
			}
			res, err := c.Completions.New(context.Background(), params, option.WithJSONSet("mode", tc.Mode))
			if err != nil {
				t.Fatal(err)
			}
			want := cutText(t, tc.IDs, tc.GenLength)
			if len(res.Choices) != 1 || res.Choices[0].Text != want {
				t.Fatalf("text\n got %q\nwant %q", res.Choices[0].Text, want)
			}
			if res.Choices[0].FinishReason != "length" || res.Usage.CompletionTokens != int64(tc.GenLength) ||
				res.Usage.PromptTokens != int64(len(tc.PromptIDs)) || res.Usage.TotalTokens != int64(tc.GenLength+len(tc.PromptIDs)) {
				t.Errorf("finish %q usage %+v", res.Choices[0].FinishReason, res.Usage)
			}
		})
	}
}

// max_tokens below the window: at most that many tokens come back, equal to the gRPC result.
func TestCompletionsMaxTokensCut(t *testing.T) {
	c := client(t)
	tc := loadCases(t)[3]
	res, err := c.Completions.New(context.Background(), openai.CompletionNewParams{Model: model, MaxTokens: openai.Int(40),
		Temperature: openai.Float(0), Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(tc.Prompt)}},
		option.WithJSONSet("mode", tc.Mode))
	if err != nil {
		t.Fatal(err)
	}
	fin := grpcGenerate(t, &pb.GenerateRequest{Input: &pb.GenerateRequest_Prompt{Prompt: tc.Prompt},
		Params: &pb.DecodeParams{Mode: tc.Mode, GenLength: 40}})
	if res.Choices[0].Text != fin.GetText() || res.Usage.CompletionTokens != int64(len(fin.GetTokenIds())) || len(fin.GetTokenIds()) > 40 {
		t.Fatalf("http %q (%d tokens), grpc %q (%d tokens)", res.Choices[0].Text, res.Usage.CompletionTokens, fin.GetText(), len(fin.GetTokenIds()))
	}
}

func grpcGenerate(tb testing.TB, req *pb.GenerateRequest) *pb.FinalEvent {
	tb.Helper()
	gc, err := gateway.Dial(liveMesh(tb).Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	defer gc.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+apiKey)
	fin, err := gc.Generate(ctx, req, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return fin
}

func TestCompletionsStreaming(t *testing.T) {
	c := client(t)
	tc := loadCases(t)[0]
	params := openai.CompletionNewParams{Model: model, MaxTokens: openai.Int(int64(tc.GenLength)), Temperature: openai.Float(0),
		Prompt:        openai.CompletionNewParamsPromptUnion{OfString: openai.String(tc.Prompt)},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}}
	s := c.Completions.NewStreaming(context.Background(), params, option.WithJSONSet("mode", tc.Mode))
	var text, finish string
	var chunks int
	var usage openai.CompletionUsage
	for s.Next() {
		ch := s.Current()
		chunks++
		for _, choice := range ch.Choices {
			text += choice.Text
			if choice.FinishReason != "" {
				finish = string(choice.FinishReason)
			}
		}
		if ch.Usage.TotalTokens > 0 {
			usage = ch.Usage
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if want := cutText(t, tc.IDs, tc.GenLength); text != want || finish != "length" {
		t.Fatalf("streamed %q finish %q\nwant %q length", text, finish, want)
	}
	if usage.CompletionTokens != int64(tc.GenLength) || chunks < 3 {
		t.Errorf("usage %+v in %d chunks", usage, chunks)
	}
}

func TestChat(t *testing.T) {
	c := client(t)
	msgs := []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("You write Go."), openai.UserMessage("func Reverse(s string) string {")}
	params := openai.ChatCompletionNewParams{Model: model, Messages: msgs, MaxCompletionTokens: openai.Int(48), Temperature: openai.Float(0)}
	res, err := c.Chat.Completions.New(context.Background(), params)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Choices) != 1 || res.Choices[0].Message.Role != "assistant" || res.Usage.CompletionTokens > 48 || res.Usage.CompletionTokens == 0 {
		t.Fatalf("chat %+v usage %+v", res.Choices, res.Usage)
	}
	// The same conversation through gRPC Generate renders with the same template.
	fin := grpcGenerate(t, &pb.GenerateRequest{Input: &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{Messages: []*pb.ChatMessage{
		{Role: "system", Content: "You write Go."}, {Role: "user", Content: "func Reverse(s string) string {"}}}},
		Params: &pb.DecodeParams{GenLength: 48}})
	if res.Choices[0].Message.Content != fin.GetText() {
		t.Errorf("http %q, grpc %q", res.Choices[0].Message.Content, fin.GetText())
	}

	s := c.Chat.Completions.NewStreaming(context.Background(), params)
	var acc openai.ChatCompletionAccumulator
	roles := 0
	for s.Next() {
		ch := s.Current()
		acc.AddChunk(ch)
		for _, choice := range ch.Choices {
			if choice.Delta.Role == "assistant" {
				roles++
			}
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if got := acc.Choices[0].Message.Content; got != res.Choices[0].Message.Content || roles != 1 || acc.Choices[0].FinishReason != res.Choices[0].FinishReason {
		t.Errorf("streamed %q (%d role deltas, finish %q), whole %q (finish %q)", got, roles, acc.Choices[0].FinishReason,
			res.Choices[0].Message.Content, res.Choices[0].FinishReason)
	}
}

// A stop string cuts the text, streamed and whole, and the finish reason is stop.
func TestStop(t *testing.T) {
	c := client(t)
	tc := loadCases(t)[0]
	full := cutText(t, tc.IDs, tc.GenLength)
	const stop = `"strings"`
	cut := strings.Index(full, stop)
	if cut < 0 {
		t.Fatalf("no %s in %q", stop, full)
	}
	params := openai.CompletionNewParams{Model: model, MaxTokens: openai.Int(int64(tc.GenLength)), Temperature: openai.Float(0),
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(tc.Prompt)},
		Stop:   openai.CompletionNewParamsStopUnion{OfStringArray: []string{"never-there", stop}}}
	res, err := c.Completions.New(context.Background(), params, option.WithJSONSet("mode", tc.Mode))
	if err != nil {
		t.Fatal(err)
	}
	if res.Choices[0].Text != full[:cut] || res.Choices[0].FinishReason != "stop" {
		t.Fatalf("text %q finish %q, want %q stop", res.Choices[0].Text, res.Choices[0].FinishReason, full[:cut])
	}
	s := c.Completions.NewStreaming(context.Background(), params, option.WithJSONSet("mode", tc.Mode))
	var text string
	for s.Next() {
		for _, ch := range s.Current().Choices {
			text += ch.Text
		}
	}
	if s.Err() != nil || text != full[:cut] {
		t.Fatalf("streamed %q (%v), want %q", text, s.Err(), full[:cut])
	}
}

func apiStatus(err error) int {
	var ae *openai.Error
	if errors.As(err, &ae) {
		return ae.StatusCode
	}
	return 0
}

func TestErrors(t *testing.T) {
	c := client(t)
	prompt := openai.CompletionNewParamsPromptUnion{OfString: openai.String("func main() {")}
	for _, tc := range []struct {
		name   string
		params openai.CompletionNewParams
		opts   []option.RequestOption
		status int
		param  string
		msg    string
	}{
		{"temperature out of range", openai.CompletionNewParams{Model: model, Prompt: prompt, Temperature: openai.Float(11)}, nil,
			400, "temperature", "[0, 10]"},
		{"max_tokens 0", openai.CompletionNewParams{Model: model, Prompt: prompt, MaxTokens: openai.Int(0)},
			[]option.RequestOption{option.WithJSONSet("max_tokens", 0)}, 400, "max_tokens", "[1, 65536]"},
		{"n 2", openai.CompletionNewParams{Model: model, Prompt: prompt, N: openai.Int(2)}, nil, 400, "n", "only 1"},
		{"tau_mask extra out of range", openai.CompletionNewParams{Model: model, Prompt: prompt},
			[]option.RequestOption{option.WithJSONSet("tau_mask", 1.5)}, 400, "tau_mask", "(0, 1]"},
		{"unknown mode", openai.CompletionNewParams{Model: model, Prompt: prompt},
			[]option.RequestOption{option.WithJSONSet("mode", "turbo")}, 400, "mode", "q, s, v20"},
		{"window over the context", openai.CompletionNewParams{Model: model, Prompt: prompt, MaxTokens: openai.Int(60000)}, nil,
			400, "", "over the model's"},
		{"unknown model", openai.CompletionNewParams{Model: "gpt-4o", Prompt: prompt}, nil, 404, "model", "does not exist"},
		{"wrong api key", openai.CompletionNewParams{Model: model, Prompt: prompt},
			[]option.RequestOption{option.WithAPIKey("sk-wrong")}, 401, "", "incorrect API key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Completions.New(context.Background(), tc.params, tc.opts...)
			var ae *openai.Error
			if !errors.As(err, &ae) {
				t.Fatalf("error %v, want an API error", err)
			}
			if ae.StatusCode != tc.status || ae.Param != tc.param || !strings.Contains(ae.Message, tc.msg) {
				t.Fatalf("status %d param %q message %q, want %d %q containing %q", ae.StatusCode, ae.Param, ae.Message, tc.status, tc.param, tc.msg)
			}
		})
	}
}

func post(tb testing.TB, path, key, body string) *http.Response {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+liveMesh(tb).Addrs().HTTP+path, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { res.Body.Close() })
	return res
}

func TestRawErrors(t *testing.T) {
	for _, tc := range []struct {
		name, path, key, body string
		status                int
		code                  string
	}{
		{"no api key", "/v1/completions", "", `{"prompt":"a"}`, 401, "invalid_api_key"},
		{"body too large", "/v1/completions", apiKey, `{"prompt":"` + strings.Repeat("a", 5<<20) + `"}`, 413, "request_too_large"},
		{"not json", "/v1/chat/completions", apiKey, `{"messages":`, 400, ""},
		{"no messages", "/v1/chat/completions", apiKey, `{"messages":[]}`, 400, ""},
		{"image part", "/v1/chat/completions", apiKey, `{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, 400, ""},
		{"unknown path", "/v1/embeddings", apiKey, `{}`, 404, "unknown_url"},
		{"prompt batch", "/v1/completions", apiKey, `{"prompt":["a","b"]}`, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := post(t, tc.path, tc.key, tc.body)
			var body struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			code := ""
			if body.Error.Code != nil {
				code = *body.Error.Code
			}
			if res.StatusCode != tc.status || body.Error.Message == "" || body.Error.Type == "" || code != tc.code {
				t.Fatalf("status %d body %+v, want %d code %q", res.StatusCode, body.Error, tc.status, tc.code)
			}
		})
	}
}

// TestSSEFraming reads a streamed chat completion as raw bytes: every event is `data: JSON`
// and a blank line, the first chunk names the role, one carries the finish reason, the usage
// chunk has no choices, and the stream ends with `data: [DONE]`.
func TestSSEFraming(t *testing.T) {
	res := post(t, "/v1/chat/completions", apiKey, `{"model":"`+model+`","messages":[{"role":"user","content":"func main() {"}],
		"max_tokens":40,"temperature":0,"stream":true,"stream_options":{"include_usage":true},"denoise_events":true}`)
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d content type %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(raw), "data: [DONE]\n\n") {
		t.Fatalf("stream does not end with data: [DONE]: %q", tail(raw))
	}
	events := strings.Split(strings.TrimSuffix(string(raw), "\n\n"), "\n\n")
	var chunks []map[string]any
	denoise, lastBlock, lastStep := 0, -1.0, 0.0
	for i, ev := range events[:len(events)-1] {
		lines := strings.Split(ev, "\n")
		name := ""
		if strings.HasPrefix(lines[0], "event: ") {
			name, lines = strings.TrimPrefix(lines[0], "event: "), lines[1:]
		}
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "data: ") {
			t.Fatalf("event %d is not one data line: %q", i, ev)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(strings.TrimPrefix(lines[0], "data: ")), &v); err != nil {
			t.Fatalf("event %d: %v: %q", i, err, ev)
		}
		if name == "denoise" {
			denoise++
			block, step := v["block"].(float64), v["step"].(float64)
			if v["object"] != "dlmesh.denoise" || (block == lastBlock && step != lastStep+1) || (block != lastBlock && (block != lastBlock+1 || step != 1)) {
				t.Fatalf("denoise event %v after block %v step %v", v, lastBlock, lastStep)
			}
			lastBlock, lastStep = block, step
			continue
		}
		if name != "" {
			t.Fatalf("unexpected event name %q", name)
		}
		if v["object"] != "chat.completion.chunk" || v["id"] == "" {
			t.Fatalf("chunk %d: %v", i, v)
		}
		chunks = append(chunks, v)
	}
	first := chunks[0]["choices"].([]any)[0].(map[string]any)["delta"].(map[string]any)
	if first["role"] != "assistant" {
		t.Errorf("first chunk delta %v, want the role", first)
	}
	usage := chunks[len(chunks)-1]
	if len(usage["choices"].([]any)) != 0 || usage["usage"] == nil {
		t.Errorf("last chunk %v, want usage and no choices", usage)
	}
	fin := chunks[len(chunks)-2]["choices"].([]any)[0].(map[string]any)
	if fin["finish_reason"] != "length" && fin["finish_reason"] != "stop" {
		t.Errorf("finish chunk %v", fin)
	}
	if denoise == 0 || lastBlock != 1 { // 40 tokens after a short prompt: blocks 0 and 1
		t.Errorf("%d denoise events, last block %v", denoise, lastBlock)
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-200):] }

// A client that goes away mid-stream cancels its request: it leaves the batch and its attnd
// session is closed.
func TestDisconnectCancels(t *testing.T) {
	m := liveMesh(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+m.Addrs().HTTP+"/v1/completions",
		strings.NewReader(`{"prompt":"func main() {","max_tokens":2048,"temperature":0,"stream":true,"denoise_events":true}`))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(res.Body)
	if _, err := r.ReadString('\n'); err != nil { // the first step has run
		t.Fatal(err)
	}
	if m.Gateway.Stepper().Sessions() == 0 {
		t.Fatal("no session open while streaming")
	}
	cancel()
	res.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for m.Gateway.Stepper().Sessions() != 0 || m.Gateway.Queued() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the disconnect: %d sessions, %d queued", m.Gateway.Stepper().Sessions(), m.Gateway.Queued())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gRPC Generate wants the same key as metadata.
func TestGRPCAPIKey(t *testing.T) {
	gc, err := gateway.Dial(liveMesh(t).Addrs().Gateway, services.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	req := &pb.GenerateRequest{Input: &pb.GenerateRequest_Prompt{Prompt: "x"}, Params: &pb.DecodeParams{GenLength: 1}}
	for _, key := range []string{"", "sk-wrong"} {
		ctx := context.Background()
		if key != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
		}
		if _, err := gc.Generate(ctx, req, nil); status.Code(err) != codes.Unauthenticated {
			t.Errorf("key %q: %v, want Unauthenticated", key, err)
		}
	}
	if fin := grpcGenerate(t, req); len(fin.GetTokenIds()) > 1 {
		t.Errorf("gen_length 1 returned %d tokens", len(fin.GetTokenIds()))
	}
}
