package services

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

// Log formats of NewLogHandler.
const (
	LogText = "text"
	LogJSON = "json"
)

// ParseLogLevel reads a --log-level value: debug, info, warn or error (any case).
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%w: log level %q: want debug, info, warn or error", ErrBadConfig, s)
}

// NewLogHandler returns the services' log handler: slog's text or JSON handler writing to w at
// level and above, wrapped so that a record logged with a context carrying a valid span gets
// trace_id and span_id attributes (the ids Jaeger shows, so a log line leads to its trace).
func NewLogHandler(w io.Writer, format string, level slog.Level) (slog.Handler, error) {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch format {
	case LogText, "":
		h = slog.NewTextHandler(w, opts)
	case LogJSON:
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("%w: log format %q: want text or json", ErrBadConfig, format)
	}
	return TraceHandler{h}, nil
}

// TraceHandler adds the trace_id and span_id of the span in a record's context, when there is a
// valid one, to the records it passes to the handler it wraps.
type TraceHandler struct{ slog.Handler }

var _ slog.Handler = TraceHandler{}

// Handle implements slog.Handler.
func (h TraceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h TraceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return TraceHandler{h.Handler.WithAttrs(as)}
}

// WithGroup implements slog.Handler.
func (h TraceHandler) WithGroup(name string) slog.Handler {
	return TraceHandler{h.Handler.WithGroup(name)}
}
