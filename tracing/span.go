package tracing

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// Span is one line of a span file, as FileExporter writes it and ReadSpans reads it back.
type Span struct {
	Name string `json:"name"`
	// TraceID and SpanID are lowercase hex (32 and 16 digits); ParentSpanID is empty for a root.
	TraceID      string    `json:"trace_id"`
	SpanID       string    `json:"span_id"`
	ParentSpanID string    `json:"parent_span_id,omitempty"`
	Start        time.Time `json:"start"`
	End          time.Time `json:"end"`
	DurationMs   float64   `json:"duration_ms"`
	// Attributes hold bool, int64, float64, string, or slices of one of them ([]bool, []int64,
	// []float64, []string). Non-finite floats are written as the strings "NaN", "+Inf", "-Inf".
	Attributes Attributes `json:"attributes,omitempty"`
	Status     Status     `json:"status"`
	// Service is the service.name of the provider that recorded the span.
	Service string `json:"service"`
	// Kind is "internal", "server", "client", "producer" or "consumer"; Scope the tracer name.
	Kind   string  `json:"kind,omitempty"`
	Scope  string  `json:"scope,omitempty"`
	Events []Event `json:"events,omitempty"`
}

// Status is a span's status: Code is "Unset", "Ok" or "Error".
type Status struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

// Event is a timed annotation of a span.
type Event struct {
	Name       string     `json:"name"`
	Time       time.Time  `json:"time"`
	Attributes Attributes `json:"attributes,omitempty"`
}

// Attributes are span or event attributes by key. Integers and floats stay apart across the
// JSON round trip: floats are always written with a fraction or exponent.
type Attributes map[string]any

// UnmarshalJSON reads numbers back as int64 or float64 and homogeneous arrays as typed slices.
func (a *Attributes) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var raw map[string]any
	if err := dec.Decode(&raw); err != nil {
		return err
	}
	if raw == nil {
		*a = nil
		return nil
	}
	out := make(Attributes, len(raw))
	for k, v := range raw {
		out[k] = decodeValue(v)
	}
	*a = out
	return nil
}

func decodeValue(v any) any {
	switch v := v.(type) {
	case json.Number:
		return decodeNumber(v)
	case []any:
		return decodeSlice(v)
	}
	return v
}

func decodeNumber(n json.Number) any {
	if !strings.ContainsAny(n.String(), ".eE") {
		if i, err := n.Int64(); err == nil {
			return i
		}
	}
	f, _ := n.Float64() // a json.Number from the decoder always parses
	return f
}

// decodeSlice turns a homogeneous array into []bool, []int64, []float64 or []string.
func decodeSlice(vs []any) any {
	if len(vs) == 0 {
		return vs
	}
	switch vs[0].(type) {
	case bool:
		return typedSlice[bool](vs, func(v any) (bool, bool) { b, ok := v.(bool); return b, ok })
	case string:
		return typedSlice[string](vs, func(v any) (string, bool) { s, ok := v.(string); return s, ok })
	case json.Number:
		ints := typedSlice[int64](vs, func(v any) (int64, bool) {
			n, ok := v.(json.Number)
			if !ok {
				return 0, false
			}
			i, ok := decodeNumber(n).(int64)
			return i, ok
		})
		if ints != nil {
			return ints
		}
		floats := typedSlice[float64](vs, func(v any) (float64, bool) {
			n, ok := v.(json.Number)
			if !ok {
				return 0, false
			}
			f, err := n.Float64()
			return f, err == nil
		})
		if floats != nil {
			return floats
		}
	}
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = decodeValue(v)
	}
	return out
}

// typedSlice converts every element with conv, or returns nil (as any) when one does not fit.
func typedSlice[T any](vs []any, conv func(any) (T, bool)) any {
	out := make([]T, len(vs))
	for i, v := range vs {
		t, ok := conv(v)
		if !ok {
			return nil
		}
		out[i] = t
	}
	return out
}

// jsonFloat writes a float64 so that it reads back as a float: with a fraction or exponent, and
// non-finite values as strings.
type jsonFloat float64

func (f jsonFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	switch {
	case math.IsNaN(v):
		return []byte(`"NaN"`), nil
	case math.IsInf(v, 1):
		return []byte(`"+Inf"`), nil
	case math.IsInf(v, -1):
		return []byte(`"-Inf"`), nil
	}
	s := strconv.FormatFloat(v, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return []byte(s), nil
}

func encodeAttributes(kvs []attribute.KeyValue) Attributes {
	if len(kvs) == 0 {
		return nil
	}
	out := make(Attributes, len(kvs))
	for _, kv := range kvs {
		var v any
		switch kv.Value.Type() {
		case attribute.BOOL:
			v = kv.Value.AsBool()
		case attribute.INT64:
			v = kv.Value.AsInt64()
		case attribute.FLOAT64:
			v = jsonFloat(kv.Value.AsFloat64())
		case attribute.STRING:
			v = kv.Value.AsString()
		case attribute.BOOLSLICE:
			v = kv.Value.AsBoolSlice()
		case attribute.INT64SLICE:
			v = kv.Value.AsInt64Slice()
		case attribute.FLOAT64SLICE:
			fs := kv.Value.AsFloat64Slice()
			js := make([]jsonFloat, len(fs))
			for i, f := range fs {
				js[i] = jsonFloat(f)
			}
			v = js
		case attribute.STRINGSLICE:
			v = kv.Value.AsStringSlice()
		default:
			v = kv.Value.Emit()
		}
		out[string(kv.Key)] = v
	}
	return out
}

// ReadSpans reads a span file written by FileExporter, in file order. A last line without its
// newline that does not parse (a process killed mid-write) is ignored; any other bad line is an
// error naming its line number.
func ReadSpans(path string) ([]Span, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tracing: read spans: %w", err)
	}
	defer f.Close()
	spans, err := DecodeSpans(f)
	if err != nil {
		return nil, fmt.Errorf("tracing: read spans from %s: %w", path, err)
	}
	return spans, nil
}

// DecodeSpans reads JSON-lines spans from r, as ReadSpans does from a file.
func DecodeSpans(r io.Reader) ([]Span, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var spans []Span
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return spans, err
		}
		complete := len(line) > 0 && line[len(line)-1] == '\n'
		if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
			var s Span
			if uerr := json.Unmarshal(trimmed, &s); uerr != nil {
				if !complete {
					return spans, nil // a torn last line
				}
				return spans, fmt.Errorf("line %d: %w", lineNo, uerr)
			}
			spans = append(spans, s)
		}
		if err != nil { // io.EOF
			return spans, nil
		}
	}
}
