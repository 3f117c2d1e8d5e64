//go:build !cgo

package nvml

// Init reports ErrNoCgo: this binary was built without cgo, which go-nvml needs.
func Init() error { return ErrNoCgo }

// Shutdown does nothing without cgo.
func Shutdown() {}

// Devices reports ErrNotInitialized, as before a successful Init.
func Devices() ([]GPU, error) { return nil, ErrNotInitialized }
