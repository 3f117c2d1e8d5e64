package tracing

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// DefaultServiceName names the service when Config.ServiceName is empty.
const DefaultServiceName = "dlmesh"

// ErrBadConfig wraps every Config.Validate error.
var ErrBadConfig = errors.New("tracing: invalid config")

// Config configures tracing for one service. With neither OTLPEndpoint nor File set, tracing is
// off (a no-op provider) but trace context is still propagated.
type Config struct {
	// ServiceName is the service.name resource attribute, e.g. "attnd" (DefaultServiceName).
	ServiceName string
	// OTLPEndpoint is an OTLP/gRPC collector, "host:port", reached without TLS.
	OTLPEndpoint string
	// File receives the spans as JSON lines (see Span), appended; several services, in one
	// process or several, may share one file.
	File string
	// SampleRatio is the fraction of new traces recorded, in [0, 1]; 0 means 1 (every trace).
	// Spans with a parent follow the parent's decision.
	SampleRatio float64
}

// Validate checks c.
func (c Config) Validate() error {
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		return fmt.Errorf("%w: sample_ratio %v not in [0, 1]", ErrBadConfig, c.SampleRatio)
	}
	return nil
}

// Setup installs the global TracerProvider for cfg and the W3C trace-context (and baggage)
// propagator. shutdown flushes and stops the exporters; call it before the process exits.
// With several services in one process, the last Setup owns the global provider: give each
// service its own NewProvider instead and pass it to the services' configs.
func Setup(ctx context.Context, cfg Config) (shutdown func(context.Context) error, err error) {
	tp, shutdown, err := NewProvider(ctx, cfg)
	if err != nil {
		return nil, err
	}
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(Propagator())
	return shutdown, nil
}

// Propagator is the propagator the mesh uses: W3C trace context and baggage.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// NewProvider builds a TracerProvider for cfg without installing it: a no-op provider when no
// exporter is configured, otherwise an SDK provider batching to the OTLP and/or file exporters.
func NewProvider(ctx context.Context, cfg Config) (trace.TracerProvider, func(context.Context) error, error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	if cfg.OTLPEndpoint == "" && cfg.File == "" {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	name := cfg.ServiceName
	if name == "" {
		name = DefaultServiceName
	}
	ratio := cfg.SampleRatio
	if ratio == 0 {
		ratio = 1
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", name)))
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
	}
	var exporters []sdktrace.SpanExporter
	if cfg.OTLPEndpoint != "" {
		exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint), otlptracegrpc.WithInsecure())
		if err != nil {
			return nil, nil, fmt.Errorf("tracing: otlp exporter %s: %w", cfg.OTLPEndpoint, err)
		}
		exporters = append(exporters, exp)
	}
	if cfg.File != "" {
		exp, err := NewFileExporter(cfg.File, name)
		if err != nil {
			for _, e := range exporters {
				_ = e.Shutdown(ctx) // undo the OTLP exporter; the file error is the one to report
			}
			return nil, nil, err
		}
		exporters = append(exporters, exp)
	}
	for _, e := range exporters {
		opts = append(opts, sdktrace.WithBatcher(e))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	return tp, tp.Shutdown, nil
}

// Tracer returns a tracer of the global provider.
func Tracer(name string) trace.Tracer {
	return otel.Tracer(name)
}
