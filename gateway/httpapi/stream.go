package httpapi

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/dlmesh/dlmesh/engine"
	"github.com/dlmesh/dlmesh/tokenizer"
)

func now() int64 { return time.Now().Unix() }

// stream writes one request's server-sent events. The headers go out with the first engine
// event, so a request the engine refuses at once (a full queue, a window over the context) still
// gets its HTTP status; after that an error travels as a `data: {"error": …}` event.
type stream struct {
	w       http.ResponseWriter
	k       kind
	id      string
	model   string
	created int64
	tok     *tokenizer.Tokenizer
	prompt  int // prompt tokens
	genLen  int
	denoise bool

	started bool
	failed  bool // a write failed: the client is gone
}

func (s *stream) start() {
	if s.started {
		return
	}
	s.started = true
	h := s.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)
	if s.k.chat { // OpenAI's first chat chunk names the role
		s.chunk(map[string]any{"role": "assistant", "content": ""}, nil)
	} else {
		s.flush()
	}
}

func (s *stream) flush() {
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
}

// event writes one SSE event (name empty: a plain data event) and flushes it.
func (s *stream) event(name string, v any) {
	if s.failed {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	var buf []byte
	if name != "" {
		buf = append(append(append(buf, "event: "...), name...), '\n')
	}
	buf = append(append(append(buf, "data: "...), b...), "\n\n"...)
	if _, err := s.w.Write(buf); err != nil {
		s.failed = true
		return
	}
	s.flush()
}

// chunk writes a chunk with one choice: delta is the chat delta, or the completion text.
func (s *stream) chunk(delta any, finish *string) {
	choice := map[string]any{"index": 0, "finish_reason": finish, "logprobs": nil}
	if s.k.chat {
		choice["delta"] = delta
	} else {
		choice["text"] = delta
	}
	s.event("", map[string]any{"id": s.id, "object": s.k.chunk, "created": s.created, "model": s.model, "choices": []any{choice}})
}

func (s *stream) on(ev engine.Event) {
	s.start()
	switch {
	case ev.Block != nil && ev.Block.Text != "":
		if s.k.chat {
			s.chunk(map[string]any{"content": ev.Block.Text}, nil)
		} else {
			s.chunk(ev.Block.Text, nil)
		}
	case ev.Step != nil && s.denoise:
		s.event("denoise", s.denoiseEvent(ev.Step))
	}
}

// denoiseEvent is one step as the opt-in denoise events show it: the block (counted from the one
// holding the first generated token) and the step within it, the block's provisional text (its
// generated positions before gen_length that hold a token, up to EOS) and the positions, counted
// from the first generated token, that the step unmasked and edited.
func (s *stream) denoiseEvent(st *engine.StepEvent) map[string]any {
	unmasked, edited := []int{}, []int{}
	for _, c := range st.Changes {
		if c.Edit {
			edited = append(edited, c.Pos)
		} else {
			unmasked = append(unmasked, c.Pos)
		}
	}
	var ids []int32
	masked := 0
	eos := false
	for i, t := range st.Tokens {
		pos := st.BlockLo + i - st.PromptLen
		switch {
		case pos < 0 || pos >= s.genLen:
		case t == s.tok.MaskID():
			masked++
		case t == s.tok.EOSID():
			eos = true
		case !eos && !s.tok.IsSpecial(t):
			ids = append(ids, t)
		}
	}
	return map[string]any{"object": "dlmesh.denoise", "id": s.id, "block": st.Block, "step": st.Step,
		"block_start": st.BlockLo - st.PromptLen, "masked_before": st.MaskedBefore, "masked": masked,
		"unmasked": unmasked, "edited": edited, "text": s.tok.Decode(ids), "step_ms": st.StepMs}
}

// end closes the stream: the finish chunk, the usage chunk if asked, [DONE]; or the error.
func (s *stream) end(res *engine.Result, err error, includeUsage bool) {
	if err != nil {
		ae := fromError(err)
		if !s.started {
			if ae.status != 499 {
				writeError(s.w, ae)
			}
			return
		}
		s.event("", map[string]any{"error": ae})
		return
	}
	s.start()
	reason := res.FinishReason
	if s.k.chat {
		s.chunk(map[string]any{}, &reason)
	} else {
		s.chunk("", &reason)
	}
	if includeUsage {
		s.event("", map[string]any{"id": s.id, "object": s.k.chunk, "created": s.created, "model": s.model,
			"choices": []any{}, "usage": usage(res)})
	}
	if !s.failed {
		if _, err := s.w.Write([]byte("data: [DONE]\n\n")); err == nil {
			s.flush()
		}
	}
}
