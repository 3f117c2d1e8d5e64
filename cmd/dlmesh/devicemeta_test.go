package main

import (
	"testing"

	"github.com/dlmesh/dlmesh/services"
)

// TestPinByUUID: the registration names the NVML device whose UUID CUDA gives the ordinal, even
// when NVML's (PCI) order differs from CUDA's.
func TestPinByUUID(t *testing.T) {
	gpus := []services.GPU{
		{Index: 0, UUID: "GPU-aaaa", Name: "A", MemoryTotalMiB: 80},
		{Index: 1, UUID: "GPU-bbbb", Name: "B", MemoryTotalMiB: 141},
	}
	pinned, ok := pinByUUID(gpus, 0, "GPU-bbbb")
	if !ok || len(pinned) != 1 {
		t.Fatalf("pinByUUID = %v, %v", pinned, ok)
	}
	meta, err := services.DeviceMeta("cuda:0", pinned, "")
	if err != nil {
		t.Fatal(err)
	}
	if meta[services.MetaGPUUUID] != "GPU-bbbb" || meta[services.MetaGPUName] != "B" || meta[services.MetaGPUIndex] != "0" {
		t.Errorf("meta %v: want cuda:0 named as NVML's GPU-bbbb", meta)
	}
	if _, ok := pinByUUID(gpus, 0, "GPU-cccc"); ok {
		t.Error("an unknown UUID pinned a device")
	}
	for _, c := range []struct {
		backend string
		n       int
		ok      bool
	}{{"cuda", 0, true}, {"cuda:3", 3, true}, {"cuda:x", 0, false}, {"cpu", 0, false}, {"cuda:-1", 0, false}} {
		if n, ok := cudaOrdinal(c.backend); ok != c.ok || ok && n != c.n {
			t.Errorf("cudaOrdinal(%q) = %d, %v; want %d, %v", c.backend, n, ok, c.n, c.ok)
		}
	}
}
