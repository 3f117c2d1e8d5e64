// Package chat renders chat requests (messages, tools, add_generation_prompt) into prompt text
// with a model's Jinja chat_template, as Hugging Face's apply_chat_template does: the template
// from tokenizer_config.json, trim_blocks and lstrip_blocks, the variables messages, tools,
// add_generation_prompt, bos_token and eos_token, raise_exception, and tojson without ASCII
// escaping and with Python's separators. The engine is github.com/ardanlabs/jinja.
//
// Messages and tools are generic JSON objects: any role the template accepts, tool calls and tool
// results pass through. JSON objects keep their key order when given as JSON text
// (json.RawMessage, ParseRequest), which matters where a template prints them with tojson.
//
// A model without a chat_template gets Default, dlmesh's built-in template.
//
// Who may import: gateway (and gateway/httpapi), cmd/dlmesh, tests. It imports tokenizer (for
// the template's source in tokenizer_config.json) only.
package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ardanlabs/jinja"

	"github.com/dlmesh/dlmesh/tokenizer"
)

// ErrBadRequest wraps every error caused by the request being rendered (a message or tool that
// is not a JSON object, the template's raise_exception, a failed expression).
var ErrBadRequest = errors.New("chat: bad request")

// DefaultSource is the built-in template used when a model has none: each turn as
// <role>ROLE</role>CONTENT<|role_end|>, then <role>assistant</role> when a generation prompt is
// asked for. It refuses roles that are not lowercase words and content that holds a marker.
const DefaultSource = `{%- for message in messages %}
{%- if message.role is not string or not message.role %}
{{- raise_exception('messages[' ~ loop.index0 ~ '].role must be a string') }}
{%- endif %}
{%- set content = message.content if message.content is string else '' %}
{%- if '<|role_end|>' in content or '<role>' in content or '</role>' in content %}
{{- raise_exception('messages[' ~ loop.index0 ~ '].content contains a turn marker (<role>, </role> or <|role_end|>)') }}
{%- endif %}
{{- '<role>' + message.role + '</role>' + content + '<|role_end|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<role>assistant</role>' }}
{%- endif %}`

// Request is what a template renders.
type Request struct {
	// Messages are the turns, each a JSON object: a map[string]any (keys in sorted order, Go
	// maps having none), json.RawMessage (keys in their order), or any value encoding/json
	// marshals to an object (a struct keeps its field order).
	Messages []any
	// Tools are the tool definitions, JSON objects as Messages are; nil or empty means none.
	Tools []any
	// AddGenerationPrompt ends the text with the assistant's turn opening.
	AddGenerationPrompt bool
	// Vars are further template variables (enable_thinking, …); they cannot replace the ones
	// above.
	Vars map[string]any
}

// Template is a compiled chat template. It is safe for concurrent use.
type Template struct {
	source   string
	tmpl     *jinja.Template
	bos, eos string
	builtin  bool
}

// New compiles source; bos and eos are what the template sees as bos_token and eos_token.
func New(source, bos, eos string) (*Template, error) {
	t, err := jinja.Compile(source)
	if err != nil {
		return nil, fmt.Errorf("chat: compile template: %w", err)
	}
	return &Template{source: source, tmpl: t, bos: bos, eos: eos}, nil
}

// Default returns the built-in template (DefaultSource).
func Default() *Template {
	t, err := New(DefaultSource, "<|startoftext|>", "<|endoftext|>")
	if err != nil {
		panic(err) // DefaultSource is a constant that compiles
	}
	t.builtin = true
	return t
}

// Load reads modelDir/tokenizer_config.json: its chat_template (a string, or a list of
// {name, template} from which "default" is taken), bos_token and eos_token. Without the file or
// a template it returns Default.
func Load(modelDir string) (*Template, error) {
	path := filepath.Join(modelDir, "tokenizer_config.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Default(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("chat: %w", err)
	}
	t, err := FromConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return t, nil
}

// FromConfig is Load on the contents of a tokenizer_config.json.
func FromConfig(config []byte) (*Template, error) {
	var cfg struct {
		ChatTemplate json.RawMessage `json:"chat_template"`
		BOS          json.RawMessage `json:"bos_token"`
		EOS          json.RawMessage `json:"eos_token"`
	}
	if err := json.Unmarshal(config, &cfg); err != nil {
		return nil, fmt.Errorf("chat: tokenizer_config.json: %w", err)
	}
	source, err := tokenizer.ChatTemplateSource(cfg.ChatTemplate)
	if err != nil {
		return nil, err
	}
	bos, err := tokenField(cfg.BOS, "bos_token")
	if err != nil {
		return nil, err
	}
	eos, err := tokenField(cfg.EOS, "eos_token")
	if err != nil {
		return nil, err
	}
	if source == "" {
		d := Default()
		d.bos, d.eos = bos, eos
		return d, nil
	}
	return New(source, bos, eos)
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

func tokenField(raw json.RawMessage, field string) (string, error) {
	if isNull(raw) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Content == nil {
		return "", fmt.Errorf("chat: tokenizer_config.json: %s: want a string or an object with content", field)
	}
	return *obj.Content, nil
}

// IsDefault reports whether t is the built-in template (the model has none).
func (t *Template) IsDefault() bool { return t.builtin }

// Source returns the template text.
func (t *Template) Source() string { return t.source }

// Render renders req.
func (t *Template) Render(req Request) (string, error) {
	if len(req.Messages) == 0 {
		return "", fmt.Errorf("%w: messages is empty", ErrBadRequest)
	}
	msgs, err := objects(req.Messages, "messages")
	if err != nil {
		return "", err
	}
	if t.builtin {
		if err := checkRoles(msgs); err != nil {
			return "", err
		}
	}
	data := make(map[string]jinja.Value, len(req.Vars)+6)
	for k, v := range req.Vars {
		val, err := toValue(v)
		if err != nil {
			return "", fmt.Errorf("%w: vars[%q]: %v", ErrBadRequest, k, err)
		}
		data[k] = val
	}
	data["messages"] = msgs
	data["add_generation_prompt"] = jinja.NewBool(req.AddGenerationPrompt)
	data["bos_token"] = jinja.NewString(t.bos)
	data["eos_token"] = jinja.NewString(t.eos)
	data["tools"] = jinja.None()
	if len(req.Tools) > 0 {
		if data["tools"], err = objects(req.Tools, "tools"); err != nil {
			return "", err
		}
	}
	out, err := t.tmpl.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("%w: chat template: %v", ErrBadRequest, err)
	}
	return out, nil
}

// checkRoles keeps the built-in template's roles to lowercase words ([a-z_]+), which can hold
// no marker.
func checkRoles(msgs jinja.Value) error {
	for i, m := range msgs.AsList().Items {
		r, _ := m.AsDict().Get("role")
		if !r.IsString() {
			continue // the template refuses it
		}
		role := r.AsString()
		if role == "" || strings.IndexFunc(role, func(c rune) bool { return (c < 'a' || c > 'z') && c != '_' }) >= 0 {
			return fmt.Errorf("%w: messages[%d].role %q must be a lowercase word ([a-z_]+)", ErrBadRequest, i, role)
		}
	}
	return nil
}

// objects converts a list of JSON objects.
func objects(items []any, field string) (jinja.Value, error) {
	vals := make([]jinja.Value, len(items))
	for i, it := range items {
		v, err := toValue(it)
		if err != nil {
			return jinja.Value{}, fmt.Errorf("%w: %s[%d]: %v", ErrBadRequest, field, i, err)
		}
		if !v.IsDict() {
			return jinja.Value{}, fmt.Errorf("%w: %s[%d]: want a JSON object", ErrBadRequest, field, i)
		}
		vals[i] = v
	}
	return jinja.NewList(vals), nil
}

// toValue converts Go data to a template value: JSON text in order, maps in key order, other
// values through encoding/json.
func toValue(x any) (jinja.Value, error) {
	switch v := x.(type) {
	case nil:
		return jinja.None(), nil
	case json.RawMessage:
		return decodeJSON(v)
	case string:
		return jinja.NewString(v), nil
	case bool:
		return jinja.NewBool(v), nil
	case int:
		return jinja.NewInt(int64(v)), nil
	case int64:
		return jinja.NewInt(v), nil
	case float64:
		return jinja.NewFloat(v), nil
	case json.Number:
		return numberValue(v)
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d := jinja.NewDict()
		for _, k := range keys {
			val, err := toValue(v[k])
			if err != nil {
				return jinja.Value{}, err
			}
			d.AsDict().Set(k, val)
		}
		return d, nil
	case []any:
		items := make([]jinja.Value, len(v))
		for i, it := range v {
			val, err := toValue(it)
			if err != nil {
				return jinja.Value{}, err
			}
			items[i] = val
		}
		return jinja.NewList(items), nil
	}
	b, err := json.Marshal(x)
	if err != nil {
		return jinja.Value{}, err
	}
	return decodeJSON(b)
}

// decodeJSON decodes one JSON value, keeping the key order of objects and telling integers
// from floats as Python's json does.
func decodeJSON(b []byte) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return jinja.Value{}, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return jinja.Value{}, fmt.Errorf("trailing data after the JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (jinja.Value, error) {
	tok, err := dec.Token()
	if err != nil {
		return jinja.Value{}, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			d := jinja.NewDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return jinja.Value{}, err
				}
				val, err := decodeValue(dec)
				if err != nil {
					return jinja.Value{}, err
				}
				d.AsDict().Set(kt.(string), val)
			}
			_, err := dec.Token() // }
			return d, err
		case '[':
			var items []jinja.Value
			for dec.More() {
				val, err := decodeValue(dec)
				if err != nil {
					return jinja.Value{}, err
				}
				items = append(items, val)
			}
			_, err := dec.Token() // ]
			return jinja.NewList(items), err
		}
		return jinja.Value{}, fmt.Errorf("unexpected %v", t)
	case string:
		return jinja.NewString(t), nil
	case bool:
		return jinja.NewBool(t), nil
	case nil:
		return jinja.None(), nil
	case json.Number:
		return numberValue(t)
	}
	return jinja.Value{}, fmt.Errorf("unexpected JSON token %v", tok)
}

func numberValue(n json.Number) (jinja.Value, error) {
	if !strings.ContainsAny(string(n), ".eE") {
		if i, err := n.Int64(); err == nil {
			return jinja.NewInt(i), nil
		}
	}
	f, err := n.Float64()
	if err != nil {
		return jinja.Value{}, err
	}
	return jinja.NewFloat(f), nil
}

// ParseRequest reads a chat request in JSON, {"messages": […], "tools": […],
// "add_generation_prompt": bool}, keeping the key order of every object. Other fields become
// Vars. add_generation_prompt defaults to true.
func ParseRequest(data []byte) (Request, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return Request{}, fmt.Errorf("%w: want a JSON object with messages: %v", ErrBadRequest, err)
	}
	req := Request{AddGenerationPrompt: true}
	list := func(field string) ([]any, error) {
		r, ok := raw[field]
		if !ok || isNull(r) {
			return nil, nil
		}
		var items []json.RawMessage
		if err := json.Unmarshal(r, &items); err != nil {
			return nil, fmt.Errorf("%w: %s: want a list of JSON objects", ErrBadRequest, field)
		}
		out := make([]any, len(items))
		for i, it := range items {
			out[i] = it
		}
		return out, nil
	}
	var err error
	if req.Messages, err = list("messages"); err != nil {
		return Request{}, err
	}
	if req.Messages == nil {
		return Request{}, fmt.Errorf("%w: messages is missing", ErrBadRequest)
	}
	if req.Tools, err = list("tools"); err != nil {
		return Request{}, err
	}
	if r, ok := raw["add_generation_prompt"]; ok && !isNull(r) {
		if err := json.Unmarshal(r, &req.AddGenerationPrompt); err != nil {
			return Request{}, fmt.Errorf("%w: add_generation_prompt: want true or false", ErrBadRequest)
		}
	}
	for k, v := range raw {
		switch k {
		case "messages", "tools", "add_generation_prompt":
			continue
		}
		if req.Vars == nil {
			req.Vars = make(map[string]any)
		}
		req.Vars[k] = v
	}
	return req, nil
}
