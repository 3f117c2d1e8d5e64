package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/errdefs"
	"github.com/dlmesh/dlmesh/gateway/httpapi"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// fakeBackend answers every request with err, or reports no attnd.
type fakeBackend struct {
	tok   *tokenizer.Tokenizer
	ready bool
	err   error
}

func (f *fakeBackend) Tokenizer() *tokenizer.Tokenizer { return f.tok }
func (f *fakeBackend) RenderMessages([]map[string]any, []map[string]any) (string, error) {
	return "hi", nil
}
func (f *fakeBackend) Ready() bool { return f.ready }
func (f *fakeBackend) Run(context.Context, engine.Request, func(engine.Event)) (*engine.Result, error) {
	return nil, f.err
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
