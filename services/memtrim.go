package services

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/stats"
)

// DefaultIdleTrim is how long a process stays idle after mesh work before it returns its freed
// memory to the operating system (ServerConfig.IdleTrim).
const DefaultIdleTrim = 5 * time.Second

// Why a trim: after a burst of requests the Go heap shrinks (sessions closed, KV caches and hop
// buffers freed) but the process's RSS does not follow. The runtime returns freed pages to the
// OS only down to about 110% of the heap goal of the last GC, and that goal was set under load;
// an idle process runs no GC until the forced one two minutes later. So an attnd or expertd
// that served a burst keeps 10-15% more resident memory than before it for minutes. The trimmer
// watches the process's mesh traffic (the messages of its gRPC servers and clients, health and
// reflection calls excepted, so that probes do not count as work) and, once that traffic has
// been quiet for IdleTrim after any activity, drops the services' idle buffers (OnIdleTrim) and
// runs debug.FreeOSMemory once: a GC and a scavenge, at a moment when the pause costs no request
// anything.
//
// The heap is the process's, so the trimmer is too: one per process, however many services
// `dlmesh up` runs in it; the first server configured with a non-negative IdleTrim starts it
// and the shortest IdleTrim asked for wins.
var procTrim = &idleTrimmer{free: freeOSMemory, now: time.Now}

// freeOSMemory runs two collections before returning the free pages: the first moves the
// sync.Pools' contents (the CPU backend's scratch buffers) to their victim caches, the second
// drops them.
func freeOSMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// OnIdleTrim registers release to run, before the memory is returned, each time the process's
// trimmer finds it idle: a service drops the buffers it keeps for the next request there
// (attnd: its fan-outs' host buffers). The returned function unregisters it.
func OnIdleTrim(release func()) (unregister func()) {
	return procTrim.onTrim(release)
}

// idleTrimmer counts mesh activity and frees memory after a quiet period. It runs no goroutine
// of its own: the first message after a trim arms a timer, which fires when the quiet period may
// have passed and either trims or waits the rest of it.
type idleTrimmer struct {
	free func()
	now  func() time.Time

	activity atomic.Int64 // messages seen since start
	lastNs   atomic.Int64 // unix ns of the last message
	afterNs  atomic.Int64 // the quiet period; 0: not started
	armed    atomic.Bool  // a timer will call fire

	mu      sync.Mutex
	hooks   map[int]func() // OnIdleTrim's, by registration number
	nextID  int
	trimmed int64 // activity at the last trim
	trims   int64
}

// touch records one message of mesh work.
func (t *idleTrimmer) touch() {
	t.activity.Add(1)
	t.lastNs.Store(t.now().UnixNano())
	if after := t.afterNs.Load(); after > 0 && !t.armed.Load() && t.armed.CompareAndSwap(false, true) {
		time.AfterFunc(time.Duration(after), t.fire)
	}
}

// start sets the quiet period (the shortest of those asked for); not positive: no change.
func (t *idleTrimmer) start(after time.Duration) {
	for after > 0 {
		cur := t.afterNs.Load()
		if cur != 0 && cur <= int64(after) || t.afterNs.CompareAndSwap(cur, int64(after)) {
			return
		}
	}
}

// fire is the timer's: trim when due, or wait the rest of the quiet period.
func (t *idleTrimmer) fire() {
	for {
		if wait := t.tick(); wait > 0 {
			time.AfterFunc(wait, t.fire)
			return
		}
		t.armed.Store(false)
		// a message that came while armed was still set armed no timer: re-arm for it
		t.mu.Lock()
		pending := t.activity.Load() != t.trimmed
		t.mu.Unlock()
		if !pending || !t.armed.CompareAndSwap(false, true) {
			return
		}
	}
}

// tick frees memory when there was activity since the last trim and none for the quiet
// period. It returns how much longer to wait for that (0: it trimmed, or there is nothing to
// trim for).
func (t *idleTrimmer) tick() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, after := t.activity.Load(), time.Duration(t.afterNs.Load())
	if after <= 0 || n == t.trimmed {
		return 0
	}
	if quiet := t.now().Sub(time.Unix(0, t.lastNs.Load())); quiet < after {
		return after - quiet
	}
	t0 := time.Now()
	for _, release := range t.hooks {
		release()
	}
	t.free()
	t.trimmed = n
	t.trims++
	slog.Debug("returned freed memory to the OS after idle", "idle_after", after, "took", time.Since(t0))
	return 0
}

func (t *idleTrimmer) onTrim(release func()) func() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.hooks == nil {
		t.hooks = map[int]func(){}
	}
	id := t.nextID
	t.nextID++
	t.hooks[id] = release
	return func() {
		t.mu.Lock()
		delete(t.hooks, id)
		t.mu.Unlock()
	}
}

// trimStats is a gRPC stats handler that reports every message of a call, but those of the
// health and reflection services, to the trimmer.
type trimStats struct{ t *idleTrimmer }

type trimKey struct{}

func (h trimStats) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if strings.HasPrefix(info.FullMethodName, "/grpc.health.") || strings.HasPrefix(info.FullMethodName, "/grpc.reflection.") {
		return context.WithValue(ctx, trimKey{}, true)
	}
	return ctx
}

func (h trimStats) HandleRPC(ctx context.Context, s stats.RPCStats) {
	switch s.(type) {
	case *stats.InPayload, *stats.OutPayload:
		if ctx.Value(trimKey{}) == nil {
			h.t.touch()
		}
	}
}

func (trimStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (trimStats) HandleConn(context.Context, stats.ConnStats)                       {}
