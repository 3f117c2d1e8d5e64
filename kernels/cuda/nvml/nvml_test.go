package nvml

import (
	"errors"
	"testing"
)

func TestDevicesBeforeInit(t *testing.T) {
	Shutdown()
	if _, err := Devices(); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Devices before Init: %v, want ErrNotInitialized", err)
	}
}

func TestDevices(t *testing.T) {
	if err := Init(); err != nil {
		t.Skipf("nvml: no device: %v", err)
	}
	defer Shutdown()
	gpus, err := Devices()
	if err != nil {
		t.Fatal(err)
	}
	if len(gpus) == 0 {
		t.Fatal("NVML initialised but lists no device")
	}
	for _, g := range gpus {
		t.Logf("%+v", g)
		if g.Name == "" || g.UUID == "" || g.MemoryTotalMiB == 0 || g.MemoryUsedMiB+g.MemoryFreeMiB > g.MemoryTotalMiB+1 {
			t.Errorf("implausible reading %+v", g)
		}
	}
}
