package httpapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/gateway"
	"github.com/dlmesh/dlmesh/services"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// Backend is what the API runs requests on: *gateway.Server.
type Backend interface {
	Tokenizer() *tokenizer.Tokenizer
	RenderMessages(messages []map[string]any, tools []map[string]any) (string, error)
	Ready() bool
	Run(ctx context.Context, req engine.Request, onEvent func(engine.Event)) (*engine.Result, error)
	// Refused counts a request refused before Run (the gateway's failure metric and log).
	Refused(ctx context.Context, id string, code codes.Code, err error)
}

var _ Backend = (*gateway.Server)(nil)

// Server serves the API.
type Server struct {
	cfg     Config
	b       Backend
	created int64
	srv     *http.Server
	lis     net.Listener
	served  chan error
}

// New validates cfg, listens on cfg.Listen and serves the API over b until Shutdown.
func New(cfg Config, b Backend) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg.WithDefaults(), b: b, created: time.Now().Unix(), served: make(chan error, 1)}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("httpapi: listen: %w", err)
	}
	services.WarnExposed("httpapi", "the HTTP API", lis.Addr().String(), cfg.TLS != nil)
	if cfg.TLS != nil {
		lis = tls.NewListener(lis, cfg.TLS.ServerTLSConfig("h2", "http/1.1"))
	}
	s.lis = lis
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() { s.served <- s.srv.Serve(lis) }()
	return s, nil
}

// Addr is the address the API listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Shutdown stops accepting requests and waits for the running ones within cfg.StopTimeout (or
// ctx), then closes the connections left.
func (s *Server) Shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StopTimeout)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	if serr := <-s.served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// Handler returns the API's routes, behind the API key check when one is configured.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", s.models)
	mux.HandleFunc("GET /v1/models/{id...}", s.model)
	mux.HandleFunc("POST /v1/completions", s.completions)
	mux.HandleFunc("POST /v1/chat/completions", s.chatCompletions)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{status: http.StatusNotFound, Type: "invalid_request_error", Code: str("unknown_url"),
			Message: fmt.Sprintf("unknown request URL: %s %s (dlmesh serves GET /v1/models, POST /v1/completions, POST /v1/chat/completions)", r.Method, r.URL.Path)})
	})
	if s.cfg.APIKey == "" {
		return mux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		if !services.BearerOK(auth, s.cfg.APIKey) {
			msg := "incorrect API key provided"
			if auth == "" {
				msg = "missing API key: send Authorization: Bearer KEY"
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="dlmesh"`)
			writeError(w, &apiError{status: http.StatusUnauthorized, Type: "invalid_request_error", Code: str("invalid_api_key"), Message: msg})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) modelObject() map[string]any {
	return map[string]any{"id": s.cfg.Model, "object": "model", "created": s.created, "owned_by": "dlmesh"}
}

func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []any{s.modelObject()}})
}

func (s *Server) model(w http.ResponseWriter, r *http.Request) {
	if id := r.PathValue("id"); id != s.cfg.Model {
		writeError(w, s.unknownModel(id))
		return
	}
	writeJSON(w, http.StatusOK, s.modelObject())
}

func (s *Server) unknownModel(id string) *apiError {
	return &apiError{status: http.StatusNotFound, Type: "invalid_request_error", Param: str("model"), Code: str("model_not_found"),
		Message: fmt.Sprintf("the model %q does not exist; this server serves %q", id, s.cfg.Model)}
}

// checkModel accepts an empty model or the served one.
func (s *Server) checkModel(name string) *apiError {
	if name == "" || name == s.cfg.Model || strings.EqualFold(name, s.cfg.Model) {
		return nil
	}
	return s.unknownModel(name)
}
