package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/kernels/cpu"
	"github.com/dlmesh/dlmesh/kernels/cuda"
)

// newBackend opens "cpu" or "cuda[:N]".
func newBackend(name string) (kernels.Backend, error) {
	switch {
	case name == "" || name == "cpu":
		return cpu.New(), nil
	case name == "cuda" || strings.HasPrefix(name, "cuda:"):
		dev := 0
		if i := strings.IndexByte(name, ':'); i >= 0 {
			n, err := strconv.Atoi(name[i+1:])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("--backend %q: want cuda:N with N a device index", name)
			}
			dev = n
		}
		b, err := cuda.New(dev)
		if err != nil {
			return nil, fmt.Errorf("--backend %s: %w (use --backend cpu on a machine without a GPU)", name, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("--backend %q: want cpu or cuda[:N]", name)
}
