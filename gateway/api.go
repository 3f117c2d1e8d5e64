package gateway

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	otcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/tokenizer"
)

// The methods below are the gateway's in-process front-end API: gRPC Generate and the
// OpenAI-compatible HTTP API (package gateway/httpapi) both run requests through them, on the
// one engine, so both see the same queue, the same attnd pool and the same results.

// Tokenizer returns the model's tokenizer.
func (s *Server) Tokenizer() *tokenizer.Tokenizer { return s.tok }

// RenderMessages renders chat messages and tool definitions with the model's chat template
// (ChatTemplate.RenderMessages), with the generation prompt.
func (s *Server) RenderMessages(messages []map[string]any, tools []map[string]any) (string, error) {
	return s.chat.RenderMessages(messages, tools, true)
}

// Ready reports whether an attnd is known: without one every request fails with Unavailable.
func (s *Server) Ready() bool { return s.pool.Len() > 0 }

// MaxContext is the model's context length in tokens (config.json max_position_embeddings).
func (s *Server) MaxContext() int { return s.mcfg.MaxPositions }

// Run generates one request on the gateway's engine, calling onEvent for every step and finished
// block, traced as a gateway.generate span. req.ID may be empty (one is made up). Errors are the
// engine's (engine.ErrOverloaded, *diffusion.ParamError, …); services.Code maps them.
func (s *Server) Run(ctx context.Context, req engine.Request, onEvent func(engine.Event)) (*engine.Result, error) {
	if req.ID == "" {
		req.ID = fmt.Sprintf("gw-%d", s.seq.Add(1))
	}
	ctx, span := s.tracer.Start(ctx, "gateway.generate", trace.WithAttributes(attribute.String("request_id", req.ID),
		attribute.Int("prompt_tokens", len(req.Prompt)), attribute.Int("gen_length", req.Params.GenLen),
		attribute.Int("block_length", req.Params.BlockLen)))
	defer span.End()
	res, err := s.eng.Generate(ctx, req, onEvent)
	if err != nil {
		span.SetStatus(otcodes.Error, err.Error())
	}
	return res, err
}
