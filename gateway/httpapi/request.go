package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"

	"github.com/dlmesh/dlmesh/diffusion"
)

// request is the body of /v1/completions and /v1/chat/completions: OpenAI's fields that dlmesh
// serves, and the decoding extras.
type request struct {
	Model    string           `json:"model"`
	Prompt   json.RawMessage  `json:"prompt"`
	Messages []map[string]any `json:"messages"`
	Tools    []map[string]any `json:"tools"`

	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	TopK                *int            `json:"top_k"`
	Seed                *int64          `json:"seed"`
	Stop                json.RawMessage `json:"stop"`
	N                   *int            `json:"n"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Logprobs json.RawMessage `json:"logprobs"`
	Echo     bool            `json:"echo"`

	// dLLM extras.
	Mode              string   `json:"mode"`
	TauMask           *float64 `json:"tau_mask"`
	TauEdit           *float64 `json:"tau_edit"`
	BlockLength       *int     `json:"block_length"`
	MaxPostSteps      *int     `json:"max_post_steps"`
	DenoiseEvents     bool     `json:"denoise_events"`
	SkipSpecialTokens *bool    `json:"skip_special_tokens"`
}

// decode reads the body (at most limit bytes) into a request.
func decode(w http.ResponseWriter, r *http.Request, limit int64) (*request, *apiError) {
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	var req request
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return nil, &apiError{status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Code: str("request_too_large"),
				Message: fmt.Sprintf("request body over %d bytes", tooBig.Limit)}
		case errors.As(err, &typ):
			return nil, badRequest(typ.Field, "invalid %s: got a JSON %s, want %s", typ.Field, typ.Value, typ.Type)
		}
		return nil, badRequest("", "the body is not a JSON object: %v", err)
	}
	return &req, nil
}

// params maps the request onto the decoding parameters and validates them; an error names the
// field (by this API's name) and its range.
func (req *request) params(defaultTokens int) (diffusion.Params, *apiError) {
	mode := req.Mode
	if mode == "" {
		mode = "q"
	}
	p, err := diffusion.Preset(mode)
	if err != nil {
		return p, fromError(err)
	}
	if req.TauMask != nil {
		p.TauMask = *req.TauMask
	}
	if req.TauEdit != nil {
		p.TauEdit, p.EditOff = *req.TauEdit, false
	}
	if req.MaxPostSteps != nil {
		p.MaxPostSteps = *req.MaxPostSteps
	}
	if req.BlockLength != nil {
		p.BlockLen = *req.BlockLength
	}
	p.GenLen = defaultTokens
	tokensField := "max_tokens"
	switch {
	case req.MaxCompletionTokens != nil:
		p.GenLen, tokensField = *req.MaxCompletionTokens, "max_completion_tokens"
	case req.MaxTokens != nil:
		p.GenLen = *req.MaxTokens
	}
	p.Temperature = 1 // OpenAI's default
	if req.Temperature != nil {
		p.Temperature = *req.Temperature
	}
	if req.TopP != nil {
		p.TopP = *req.TopP
	}
	if req.TopK != nil {
		p.TopK = *req.TopK
	}
	if req.Seed != nil {
		p.Seed = uint64(*req.Seed)
	} else {
		p.Seed = rand.Uint64()
	}
	stops, aerr := stopStrings(req.Stop)
	if aerr != nil {
		return p, aerr
	}
	p.StopStrings = stops
	if req.N != nil && *req.N != 1 {
		return p, badRequest("n", "invalid n %d: only 1 is supported (send one request per choice)", *req.N)
	}
	if lp := bytes.TrimSpace(req.Logprobs); len(lp) > 0 && !bytes.Equal(lp, []byte("null")) && !bytes.Equal(lp, []byte("false")) {
		return p, badRequest("logprobs", "logprobs are not supported (a diffusion step returns one probability per position)")
	}
	if req.Echo {
		return p, badRequest("echo", "echo is not supported")
	}
	if err := p.Validate(); err != nil {
		ae := fromError(err)
		if tokensField != "max_tokens" && ae.Param != nil && *ae.Param == "max_tokens" {
			ae.Param = &tokensField
			ae.Message = strings.Replace(ae.Message, "max_tokens", tokensField, 1)
		}
		return p, ae
	}
	return p, nil
}

// stopStrings reads "stop": null, a string, or a list of strings.
func stopStrings(raw json.RawMessage) ([]string, *apiError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, badRequest("stop", "invalid stop: want a string or a list of strings")
	}
	return list, nil
}

// promptIDs reads a completion's "prompt": a string, a list of token ids, or a batch of one of
// either; encode tokenises a string.
func (req *request) promptIDs(encode func(string) []int32) ([]int32, *apiError) {
	raw := bytes.TrimSpace(req.Prompt)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, badRequest("prompt", "prompt is required: a string or a list of token ids")
	}
	var text string
	if json.Unmarshal(raw, &text) == nil {
		return encodeText(text, encode)
	}
	var ids []int32
	if json.Unmarshal(raw, &ids) == nil {
		if len(ids) == 0 {
			return nil, badRequest("prompt", "prompt is an empty list of token ids")
		}
		return ids, nil
	}
	var texts []string
	if json.Unmarshal(raw, &texts) == nil {
		if len(texts) != 1 {
			return nil, badRequest("prompt", "prompt is a batch of %d strings: only one prompt per request is supported", len(texts))
		}
		return encodeText(texts[0], encode)
	}
	var batch [][]int32
	if json.Unmarshal(raw, &batch) == nil {
		if len(batch) != 1 || len(batch[0]) == 0 {
			return nil, badRequest("prompt", "prompt is a batch of %d token lists: only one non-empty prompt per request is supported", len(batch))
		}
		return batch[0], nil
	}
	return nil, badRequest("prompt", "invalid prompt: want a string or a list of token ids (int32)")
}

func encodeText(text string, encode func(string) []int32) ([]int32, *apiError) {
	ids := encode(text)
	if len(ids) == 0 {
		return nil, badRequest("prompt", "prompt is empty (it encodes to no tokens)")
	}
	return ids, nil
}

// chatMessages checks the messages and flattens content given as a list of text parts into one
// string, as chat templates expect.
func (req *request) chatMessages() ([]map[string]any, *apiError) {
	if len(req.Messages) == 0 {
		return nil, badRequest("messages", "messages is required: a non-empty list of {role, content}")
	}
	out := make([]map[string]any, len(req.Messages))
	for i, m := range req.Messages {
		role, ok := m["role"].(string)
		if !ok || role == "" {
			return nil, badRequest(fmt.Sprintf("messages[%d].role", i), "messages[%d].role is required (system, user, assistant, tool)", i)
		}
		c := make(map[string]any, len(m))
		for k, v := range m {
			c[k] = v
		}
		switch content := m["content"].(type) {
		case nil, string:
		case []any:
			var b strings.Builder
			for j, part := range content {
				pm, _ := part.(map[string]any)
				if typ, _ := pm["type"].(string); typ != "text" {
					return nil, badRequest(fmt.Sprintf("messages[%d].content[%d].type", i, j),
						"messages[%d].content[%d].type %q: only text parts are supported", i, j, typ)
				}
				text, _ := pm["text"].(string)
				b.WriteString(text)
			}
			c["content"] = b.String()
		default:
			return nil, badRequest(fmt.Sprintf("messages[%d].content", i), "messages[%d].content: want a string or a list of text parts", i)
		}
		out[i] = c
	}
	return out, nil
}
