package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/gateway/httpapi"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// fakeBackend answers every request with err, or reports no attnd, and records the refusals it
// is told of.
type fakeBackend struct {
	tok     *tokenizer.Tokenizer
	ready   bool
	err     error
	mu      sync.Mutex
	refused []codes.Code
	runs    int
}

func (f *fakeBackend) Refused(_ context.Context, _ string, code codes.Code, _ error) {
	f.mu.Lock()
	f.refused = append(f.refused, code)
	f.mu.Unlock()
}

func (f *fakeBackend) Tokenizer() *tokenizer.Tokenizer { return f.tok }
func (f *fakeBackend) RenderMessages([]map[string]any, []map[string]any) (string, error) {
	return "hi", nil
}
func (f *fakeBackend) Ready() bool { return f.ready }
func (f *fakeBackend) Run(context.Context, engine.Request, func(engine.Event)) (*engine.Result, error) {
	f.mu.Lock()
	f.runs++
	f.mu.Unlock()
	return nil, f.err
}

// TestRefusalsCounted: a request the API refuses before the engine is told to the backend (the
// gateway's failure metric) with the gRPC API's code for it; one the engine answered is not
// (the engine counts it).
func TestRefusalsCounted(t *testing.T) {
	tok, err := tinyTok()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, body string
		ready            bool
		want             []codes.Code
	}{
		{"not json", "/v1/completions", `{"prompt":`, true, []codes.Code{codes.InvalidArgument}},
		{"unknown model", "/v1/completions", `{"model":"gpt-9","prompt":"hi"}`, true, []codes.Code{codes.NotFound}},
		{"bad temperature", "/v1/completions", `{"prompt":"hi","temperature":-1}`, true, []codes.Code{codes.InvalidArgument}},
		{"no messages", "/v1/chat/completions", `{"messages":[]}`, true, []codes.Code{codes.InvalidArgument}},
		{"no attnd", "/v1/completions", `{"prompt":"hi"}`, false, []codes.Code{codes.Unavailable}},
		{"answered by the engine", "/v1/completions", `{"prompt":"hi"}`, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &fakeBackend{tok: tok, ready: tc.ready, err: fmt.Errorf("wrapped: %w", errdefs.ErrOverloaded)}
			s, err := httpapi.New(httpapi.Config{Listen: "127.0.0.1:0", Model: model}, b)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body)))
			if rec.Code < 400 {
				t.Fatalf("status %d, want a refusal", rec.Code)
			}
			if !slices.Equal(b.refused, tc.want) {
				t.Fatalf("refusals told to the backend %v, want %v (status %d: %s)", b.refused, tc.want, rec.Code, rec.Body)
			}
			if (tc.want == nil) != (b.runs == 1) {
				t.Fatalf("%d runs with refusals %v", b.runs, b.refused)
			}
		})
	}
}

func TestOverloadAndUnavailable(t *testing.T) {
	tok, err := tinyTok()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		b      *fakeBackend
		status int
		code   string
	}{
		{"no attnd", &fakeBackend{tok: tok}, 503, "unavailable"},
		{"queue full", &fakeBackend{tok: tok, ready: true, err: fmt.Errorf("wrapped: %w", errdefs.ErrOverloaded)}, 429, "queue_full"},
		{"experts gone", &fakeBackend{tok: tok, ready: true, err: fmt.Errorf("step: %w", services.ErrNoReplica)}, 503, "unavailable"},
	} {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprint(tc.name, " stream=", stream), func(t *testing.T) {
				s, err := httpapi.New(httpapi.Config{Listen: "127.0.0.1:0", Model: model}, tc.b)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
				rec := httptest.NewRecorder()
				body := fmt.Sprintf(`{"prompt":"hi","stream":%v}`, stream)
				s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/completions", strings.NewReader(body)))
				var v struct {
					Error struct {
						Code string `json:"code"`
					} `json:"error"`
				}
				if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
					t.Fatalf("%v: %q", err, rec.Body.String())
				}
				if rec.Code != tc.status || v.Error.Code != tc.code || rec.Header().Get("Retry-After") == "" {
					t.Fatalf("status %d code %q retry-after %q, want %d %q", rec.Code, v.Error.Code, rec.Header().Get("Retry-After"), tc.status, tc.code)
				}
			})
		}
	}
}
