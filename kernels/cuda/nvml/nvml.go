// Package nvml reports GPU telemetry (memory, utilisation, temperature, power) through NVIDIA's
// NVML, for the services' health and metrics endpoints and `dlmesh bench`.
//
// It wraps github.com/NVIDIA/go-nvml, which uses cgo and opens libnvidia-ml.so.1 at run time.
// Built without cgo (CGO_ENABLED=0: a static binary, a distroless image) the package still
// compiles, and Init returns ErrNoCgo: the binary works, only without NVML telemetry.
// NVML must be initialised before any other call — another call first kills the process — so
// every function here checks that Init succeeded. Without the library or a device, Init and
// Devices return errors; nothing panics.
//
// Who may import: cmd, services and tests.
package nvml

import "errors"

var (
	// ErrNotInitialized is returned by Devices before a successful Init.
	ErrNotInitialized = errors.New("nvml: not initialized")
	// ErrNoCgo is returned by Init in a binary built with CGO_ENABLED=0 (go-nvml needs cgo).
	ErrNoCgo = errors.New("nvml: built without cgo: no NVML telemetry")
)

// GPU is one device's identity and current readings.
type GPU struct {
	Index          int
	Name           string
	UUID           string
	MemoryTotalMiB uint64
	MemoryUsedMiB  uint64
	MemoryFreeMiB  uint64
	UtilPercent    uint32 // GPU utilisation over the last sample period
	TemperatureC   uint32
	PowerW         float64
}
