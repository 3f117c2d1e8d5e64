package services

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/dlmesh/dlmesh/errdefs"
)

// Instance kinds.
const (
	KindGateway = "gateway"
	KindAttnd   = "attnd"
	KindExpertd = "expertd"
)

// Instance is one running service process as discovery knows it.
type Instance struct {
	// ID is unique in the registry, e.g. "expertd-g0-r1".
	ID string
	// Kind is KindGateway, KindAttnd or KindExpertd.
	Kind string
	// Addr is the gRPC address, "host:port".
	Addr string
	// Tags are free-form labels (Consul tags), e.g. "group=0".
	Tags []string
	// Meta is free-form metadata (Consul service meta), e.g. the model fingerprint.
	Meta map[string]string
}

func (in Instance) clone() Instance {
	in.Tags = slices.Clone(in.Tags)
	in.Meta = maps.Clone(in.Meta)
	return in
}

func (in Instance) equal(o Instance) bool {
	return in.ID == o.ID && in.Kind == o.Kind && in.Addr == o.Addr &&
		slices.Equal(in.Tags, o.Tags) && maps.Equal(in.Meta, o.Meta)
}

// Registry is service discovery: the in-process MemRegistry for `dlmesh up`, Consul otherwise.
// Implementations are safe for concurrent use. Instance lists are sorted by ID and are the
// caller's to keep (copies).
type Registry interface {
	// Register adds the instance or replaces the one with the same ID.
	Register(ctx context.Context, in Instance) error
	// Deregister removes the instance with this ID; removing an unknown ID is not an error.
	Deregister(ctx context.Context, id string) error
	// Instances lists the instances of a kind ("" for every kind).
	Instances(ctx context.Context, kind string) ([]Instance, error)
	// Watch sends the current instances of a kind ("" for every kind) at once, then the new set
	// after every change to it. A slow receiver sees only the latest set (intermediate ones are
	// dropped, never reordered). The channel is closed when ctx ends.
	Watch(ctx context.Context, kind string) (<-chan []Instance, error)
}

// MemRegistry is the in-process Registry.
type MemRegistry struct {
	mu        sync.Mutex
	instances map[string]Instance
	watchers  map[*memWatcher]struct{}
}

type memWatcher struct {
	kind string
	ch   chan []Instance
}

var _ Registry = (*MemRegistry)(nil)

// NewMemRegistry returns an empty in-process registry.
func NewMemRegistry() *MemRegistry {
	return &MemRegistry{
		instances: map[string]Instance{},
		watchers:  map[*memWatcher]struct{}{},
	}
}

// Register implements Registry.
func (r *MemRegistry) Register(ctx context.Context, in Instance) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if in.ID == "" || in.Kind == "" || in.Addr == "" {
		return fmt.Errorf("services: register %q: id, kind and addr must be set (kind %q, addr %q): %w",
			in.ID, in.Kind, in.Addr, errdefs.ErrInvalidArgument)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.instances[in.ID]
	if ok && old.equal(in) {
		return nil
	}
	r.instances[in.ID] = in.clone()
	r.notifyLocked(in.Kind)
	if ok && old.Kind != in.Kind {
		r.notifyLocked(old.Kind)
	}
	return nil
}

// Deregister implements Registry.
func (r *MemRegistry) Deregister(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.instances[id]
	if !ok {
		return nil
	}
	delete(r.instances, id)
	r.notifyLocked(old.Kind)
	return nil
}

// Instances implements Registry.
func (r *MemRegistry) Instances(ctx context.Context, kind string) ([]Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.listLocked(kind), nil
}

// Watch implements Registry.
func (r *MemRegistry) Watch(ctx context.Context, kind string) (<-chan []Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &memWatcher{kind: kind, ch: make(chan []Instance, 1)}
	r.mu.Lock()
	w.ch <- r.listLocked(kind)
	r.watchers[w] = struct{}{}
	r.mu.Unlock()
	go func() {
		<-ctx.Done()
		r.mu.Lock()
		delete(r.watchers, w)
		close(w.ch)
		r.mu.Unlock()
	}()
	return w.ch, nil
}

func (r *MemRegistry) listLocked(kind string) []Instance {
	list := make([]Instance, 0, len(r.instances))
	for _, in := range r.instances {
		if kind == "" || in.Kind == kind {
			list = append(list, in.clone())
		}
	}
	slices.SortFunc(list, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return list
}

// notifyLocked sends the new set of kind to its watchers (and to those watching every kind),
// replacing a set the receiver has not taken yet. r.mu is held, so this is the only sender on
// every channel and the send after the drain cannot block.
func (r *MemRegistry) notifyLocked(kind string) {
	for w := range r.watchers {
		if w.kind != "" && w.kind != kind {
			continue
		}
		select {
		case <-w.ch:
		default:
		}
		w.ch <- r.listLocked(w.kind)
	}
}
