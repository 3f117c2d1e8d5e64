package cuda

import (
	"errors"
	"fmt"

	"github.com/dlmesh/dlmesh/kernels"
)

var _ kernels.SegmentGrapher = (*Backend)(nil)

// graph is a captured, instantiated CUDA graph (kernels.Graph). Buffers freed while it was
// being recorded stay allocated until Close, since its nodes may point at them.
type graph struct {
	b    *Backend
	g    uintptr
	exec uintptr
	keep []*devBuf
}

// Capture implements kernels.Grapher: fn's ops are recorded on the backend's stream (relaxed
// capture mode) and instantiated. fn must enqueue device work only: Upload, Download, Sync,
// NewBatch and a first use of an ExpertSet or router mask do host transfers and belong before.
func (b *Backend) Capture(fn func() error) (kernels.Graph, error) {
	if err := b.BeginCapture(); err != nil {
		return nil, err
	}
	fnErr := fn()
	g, err := b.EndCapture()
	if fnErr != nil {
		if g != nil {
			g.Close()
		}
		return nil, fmt.Errorf("cuda: capture: %w", fnErr)
	}
	return g, err
}

// BeginCapture implements kernels.SegmentGrapher: the ops that follow are recorded on the
// backend's stream (relaxed mode) until EndCapture, under the rules of Capture.
func (b *Backend) BeginCapture() error {
	err := b.do(func() error {
		if b.capture != nil {
			return errors.New("cuda: capture: already capturing")
		}
		if err := b.d.check("cuStreamBeginCapture", b.d.cuStreamBeginCapture(b.stream, captureModeRelaxed)); err != nil {
			return err
		}
		b.capture = &graph{b: b}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cuda: capture: %w", err)
	}
	return nil
}

// EndCapture implements kernels.SegmentGrapher: it stops the recording BeginCapture started
// and instantiates it.
func (b *Backend) EndCapture() (kernels.Graph, error) {
	var g *graph
	err := b.do(func() error {
		if b.capture == nil {
			return errors.New("cuda: capture: not capturing")
		}
		g, b.capture = b.capture, nil
		if err := b.d.check("cuStreamEndCapture", b.d.cuStreamEndCapture(b.stream, &g.g)); err != nil {
			return err
		}
		return b.d.check("cuGraphInstantiateWithFlags", b.d.cuGraphInstantiateWithFlags(&g.exec, g.g, 0))
	})
	if err != nil {
		if g != nil {
			g.Close()
		}
		return nil, fmt.Errorf("cuda: capture: %w", err)
	}
	return g, nil
}

// Launch implements kernels.Graph: replays the recorded ops on the backend's stream.
func (g *graph) Launch() error {
	return g.b.do(func() error {
		if g.exec == 0 {
			return errors.New("cuda: graph launch: graph closed")
		}
		return g.b.d.check("cuGraphLaunch", g.b.d.cuGraphLaunch(g.exec, g.b.stream))
	})
}

// Close implements kernels.Graph.
func (g *graph) Close() error {
	return g.b.do(func() error {
		d := g.b.d
		var err error
		if g.exec != 0 || len(g.keep) > 0 {
			err = d.check("cuStreamSynchronize", d.cuStreamSynchronize(g.b.stream))
		}
		if g.exec != 0 {
			d.cuGraphExecDestroy(g.exec)
			g.exec = 0
		}
		if g.g != 0 {
			d.cuGraphDestroy(g.g)
			g.g = 0
		}
		for _, db := range g.keep {
			g.b.pool.put(db.ptr, db.size, db.class)
		}
		g.keep = nil
		return err
	})
}

// timer measures device time between two points of the stream with events.
type timer struct {
	b          *Backend
	start, end uintptr
}

func (b *Backend) newTimer() (*timer, error) {
	t := &timer{b: b}
	err := b.do(func() error {
		if err := b.d.check("cuEventCreate", b.d.cuEventCreate(&t.start, eventDefault)); err != nil {
			return err
		}
		return b.d.check("cuEventCreate", b.d.cuEventCreate(&t.end, eventDefault))
	})
	return t, err
}

func (t *timer) mark(e uintptr) error {
	return t.b.do(func() error { return t.b.d.check("cuEventRecord", t.b.d.cuEventRecord(e, t.b.stream)) })
}

// Start and Stop record the events; Ms waits for Stop and returns the elapsed milliseconds.
func (t *timer) Start() error { return t.mark(t.start) }
func (t *timer) Stop() error  { return t.mark(t.end) }
func (t *timer) Ms() (float32, error) {
	var ms float32
	err := t.b.do(func() error {
		if err := t.b.d.check("cuEventSynchronize", t.b.d.cuEventSynchronize(t.end)); err != nil {
			return err
		}
		return t.b.d.check("cuEventElapsedTime", t.b.d.cuEventElapsedTime(&ms, t.start, t.end))
	})
	return ms, err
}

func (t *timer) Close() {
	t.b.do(func() error {
		t.b.d.cuEventDestroy(t.start)
		t.b.d.cuEventDestroy(t.end)
		return nil
	})
}
