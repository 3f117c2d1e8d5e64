// Package meshtest holds the in-process mesh a package's tests share: started on the first test
// that asks for it, closed once the package's tests have run (Main), so a package pays one
// mesh.Up however many tests talk to it.
//
// Who may import: tests only (it imports testing). It imports mesh, and through it every
// service, so a service's own internal tests cannot use it.
package meshtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dlmesh/dlmesh/mesh"
)

// StartTimeout bounds the start of a shared mesh.
const StartTimeout = time.Minute

// Shared is a mesh started on first use with its config.
type Shared struct {
	cfg  mesh.Config
	once sync.Once
	m    *mesh.Mesh
	err  error
}

// New returns a shared mesh of cfg, not started yet.
func New(cfg mesh.Config) *Shared { return &Shared{cfg: cfg} }

// Mesh starts the mesh the first time and returns it; a failed start fails every test asking.
func (s *Shared) Mesh(tb testing.TB) *mesh.Mesh {
	tb.Helper()
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
		defer cancel()
		s.m, s.err = mesh.Up(ctx, s.cfg)
	})
	if s.err != nil {
		tb.Fatal(s.err)
	}
	return s.m
}

// close stops the mesh if it was started.
func (s *Shared) close() error {
	if s.m == nil {
		return nil
	}
	return s.m.Close()
}

// Main is a TestMain: it runs the package's tests, closes the shared meshes that were started
// (a failing close fails the run), then with leakCheck fails the run on a goroutine left behind
// (goleak), and exits.
func Main(m *testing.M, leakCheck bool, shared ...*Shared) {
	code := m.Run()
	for _, s := range shared {
		if err := s.close(); err != nil {
			fmt.Fprintln(os.Stderr, "mesh close:", err)
			code = 1
		}
	}
	if code == 0 && leakCheck {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
