package httpapi

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"

	"github.com/dlmesh/dlmesh/engine"
)

// kind is what differs between the two generation endpoints.
type kind struct {
	chat   bool
	prefix string // of the response id
	object string // of a whole response
	chunk  string // of a stream chunk
}

var (
	completionKind = kind{prefix: "cmpl-", object: "text_completion", chunk: "text_completion"}
	chatKind       = kind{chat: true, prefix: "chatcmpl-", object: "chat.completion", chunk: "chat.completion.chunk"}
)

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	req, aerr := decode(w, r, s.cfg.MaxBodyBytes)
	if aerr == nil {
		aerr = s.checkModel(req.Model)
	}
	var ids []int32
	if aerr == nil {
		ids, aerr = req.promptIDs(s.b.Tokenizer().Encode)
	}
	if aerr != nil {
		s.refuse(w, r, aerr)
		return
	}
	s.generate(w, r, completionKind, req, ids)
}

func (s *Server) chatCompletions(w http.ResponseWriter, r *http.Request) {
	req, aerr := decode(w, r, s.cfg.MaxBodyBytes)
	if aerr == nil {
		aerr = s.checkModel(req.Model)
	}
	var msgs []map[string]any
	if aerr == nil {
		msgs, aerr = req.chatMessages()
	}
	if aerr != nil {
		s.refuse(w, r, aerr)
		return
	}
	text, err := s.b.RenderMessages(msgs, req.Tools)
	if err != nil {
		s.refuse(w, r, fromError(err))
		return
	}
	ids, aerr := encodeText(text, s.b.Tokenizer().Encode)
	if aerr != nil {
		aerr.Param = str("messages")
		s.refuse(w, r, aerr)
		return
	}
	s.generate(w, r, chatKind, req, ids)
}

// refuse answers a request refused before the engine saw it and counts it as the gateway's
// refusals are counted (the engine counts those it saw).
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, e *apiError) {
	writeError(w, e)
	s.b.Refused(r.Context(), "", e.grpcCode(), e)
}

// generate runs one request and writes the response, whole or streamed.
func (s *Server) generate(w http.ResponseWriter, r *http.Request, k kind, req *request, prompt []int32) {
	p, aerr := req.params(s.cfg.MaxTokens)
	if aerr != nil {
		s.refuse(w, r, aerr)
		return
	}
	if !s.b.Ready() {
		s.refuse(w, r, &apiError{status: http.StatusServiceUnavailable, Type: "server_error", Code: str("unavailable"),
			Message: "no attnd instance is serving yet; retry when the mesh is up"})
		return
	}
	id := k.prefix + newID()
	ereq := engine.Request{ID: id, Prompt: prompt, Params: p, KeepSpecial: req.SkipSpecialTokens != nil && !*req.SkipSpecialTokens}
	if req.Stream {
		st := &stream{w: w, k: k, id: id, model: s.cfg.Model, created: now(), tok: s.b.Tokenizer(), prompt: len(prompt),
			genLen: p.GenLen, denoise: req.DenoiseEvents}
		res, err := s.b.Run(r.Context(), ereq, st.on)
		st.end(res, err, req.StreamOptions != nil && req.StreamOptions.IncludeUsage)
		return
	}
	res, err := s.b.Run(r.Context(), ereq, nil)
	if err != nil {
		if r.Context().Err() == nil { // else the client is gone: nobody to answer
			writeError(w, fromError(err))
		}
		return
	}
	choice := map[string]any{"index": 0, "finish_reason": res.FinishReason, "logprobs": nil}
	if k.chat {
		choice["message"] = map[string]any{"role": "assistant", "content": res.Text}
	} else {
		choice["text"] = res.Text
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "object": k.object, "created": now(), "model": s.cfg.Model,
		"choices": []any{choice}, "usage": usage(res)})
}

func usage(res *engine.Result) map[string]any {
	return map[string]any{"prompt_tokens": res.PromptTokens, "completion_tokens": len(res.IDs),
		"total_tokens": res.PromptTokens + len(res.IDs)}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
