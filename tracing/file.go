package tracing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// FileExporter writes spans to a file as JSON lines, one Span per line. Every batch is written
// with one append under a lock shared by all FileExporters of the same path in the process, so
// several services may share one file without interleaving lines. Safe for concurrent use.
type FileExporter struct {
	path    string
	service string      // used when a span's resource has no service.name
	lock    *sync.Mutex // shared by every exporter of path

	mu sync.Mutex
	f  *os.File // nil after Shutdown
}

var _ sdktrace.SpanExporter = (*FileExporter)(nil)

// fileLocks maps an absolute path to the *sync.Mutex its exporters share.
var fileLocks sync.Map

// NewFileExporter opens (creating it if needed) path for appending; service names spans whose
// resource carries no service.name.
func NewFileExporter(path, service string) (*FileExporter, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("tracing: span file %s: %w", path, err)
	}
	f, err := os.OpenFile(abs, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("tracing: span file: %w", err)
	}
	lock, _ := fileLocks.LoadOrStore(abs, new(sync.Mutex))
	return &FileExporter{path: abs, service: service, lock: lock.(*sync.Mutex), f: f}, nil
}

// ErrExporterShutdown is returned by ExportSpans after Shutdown.
var ErrExporterShutdown = errors.New("tracing: file exporter is shut down")

// ExportSpans implements sdktrace.SpanExporter.
func (e *FileExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var (
		buf  bytes.Buffer
		errs []error
	)
	for _, s := range spans {
		line, err := json.Marshal(e.span(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("tracing: encode span %q: %w", s.Name(), err))
			continue
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		return ErrExporterShutdown
	}
	e.lock.Lock()
	_, err := e.f.Write(buf.Bytes())
	e.lock.Unlock()
	if err != nil {
		errs = append(errs, fmt.Errorf("tracing: write %s: %w", e.path, err))
	}
	return errors.Join(errs...)
}

// Shutdown implements sdktrace.SpanExporter: it closes the file. Later calls do nothing.
func (e *FileExporter) Shutdown(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.f == nil {
		return nil
	}
	err := e.f.Close()
	e.f = nil
	if err != nil {
		return fmt.Errorf("tracing: close %s: %w", e.path, err)
	}
	return nil
}

// span converts an SDK span to its JSON form.
func (e *FileExporter) span(s sdktrace.ReadOnlySpan) Span {
	start, end := s.StartTime(), s.EndTime()
	out := Span{
		Name:       s.Name(),
		TraceID:    s.SpanContext().TraceID().String(),
		SpanID:     s.SpanContext().SpanID().String(),
		Start:      start.UTC(),
		End:        end.UTC(),
		DurationMs: float64(end.Sub(start).Nanoseconds()) / 1e6,
		Attributes: encodeAttributes(s.Attributes()),
		Status:     Status{Code: s.Status().Code.String(), Message: s.Status().Description},
		Service:    e.service,
		Kind:       s.SpanKind().String(),
		Scope:      s.InstrumentationScope().Name,
	}
	if p := s.Parent(); p.SpanID().IsValid() {
		out.ParentSpanID = p.SpanID().String()
	}
	if res := s.Resource(); res != nil {
		if v, ok := res.Set().Value(attribute.Key("service.name")); ok && v.AsString() != "" {
			out.Service = v.AsString()
		}
	}
	for _, ev := range s.Events() {
		out.Events = append(out.Events, Event{Name: ev.Name, Time: ev.Time.UTC(), Attributes: encodeAttributes(ev.Attributes)})
	}
	return out
}
