//go:build !cgo

package nvml

import (
	"errors"
	"testing"
)

func TestInitWithoutCgo(t *testing.T) {
	if err := Init(); !errors.Is(err, ErrNoCgo) {
		t.Fatalf("Init without cgo: %v, want ErrNoCgo", err)
	}
	if _, err := Devices(); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Devices without cgo: %v, want ErrNotInitialized", err)
	}
}
