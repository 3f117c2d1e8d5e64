package services

import (
	"maps"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

func TestDeviceMeta(t *testing.T) {
	gpus := []GPU{
		{Index: 0, UUID: "GPU-aaaa1111-0000", Name: "NVIDIA H100 80GB HBM3", MemoryFreeMiB: 80000, MemoryTotalMiB: 81559},
		{Index: 1, UUID: "GPU-bbbb2222-0000", Name: "NVIDIA H200", MemoryFreeMiB: 1000, MemoryTotalMiB: 143771},
	}
	h200 := map[string]string{MetaBackend: "cuda", MetaGPUIndex: "1", MetaGPUUUID: "GPU-bbbb2222-0000", MetaGPUName: "NVIDIA H200",
		MetaGPUFreeMiB: "1000", MetaGPUTotalMiB: "143771"}
	h100 := map[string]string{MetaBackend: "cuda", MetaGPUIndex: "0", MetaGPUUUID: "GPU-aaaa1111-0000", MetaGPUName: "NVIDIA H100 80GB HBM3",
		MetaGPUFreeMiB: "80000", MetaGPUTotalMiB: "81559"}
	for _, tc := range []struct {
		name, backend, visible string
		gpus                   []GPU
		want                   map[string]string
		err                    string // substring of the error; "" for none
	}{
		{name: "cpu", backend: "cpu", gpus: gpus, want: map[string]string{MetaBackend: "cpu"}},
		{name: "default backend", backend: "", want: map[string]string{MetaBackend: "cpu"}},
		{name: "cuda is ordinal 0", backend: "cuda", gpus: gpus, want: h100},
		{name: "cuda:1", backend: "cuda:1", gpus: gpus, want: h200},
		{name: "visible index remaps", backend: "cuda:0", visible: "1", gpus: gpus, want: func() map[string]string {
			m := maps.Clone(h200)
			m[MetaGPUIndex] = "0"
			return m
		}()},
		{name: "visible uuid prefix", backend: "cuda:1", visible: "GPU-bbbb, GPU-aaaa", gpus: gpus, want: func() map[string]string {
			m := maps.Clone(h100)
			m[MetaGPUIndex] = "1"
			return m
		}()},
		{name: "no nvml", backend: "cuda:1", want: map[string]string{MetaBackend: "cuda", MetaGPUIndex: "1"}, err: "no NVML"},
		{name: "ordinal past nvml", backend: "cuda:2", gpus: gpus, want: map[string]string{MetaBackend: "cuda", MetaGPUIndex: "2"}, err: "not among NVML's 2 devices"},
		{name: "ordinal past visible", backend: "cuda:1", visible: "0", gpus: gpus, want: map[string]string{MetaBackend: "cuda", MetaGPUIndex: "1"}, err: "has 1 entries"},
		{name: "mig entry", backend: "cuda:0", visible: "MIG-xyz", gpus: gpus, want: map[string]string{MetaBackend: "cuda", MetaGPUIndex: "0"}, err: "neither an index"},
		{name: "bad ordinal", backend: "cuda:x", gpus: gpus, want: map[string]string{MetaBackend: "cuda"}, err: "cuda:N"},
		{name: "unknown backend", backend: "rocm", want: map[string]string{MetaBackend: "rocm"}, err: "want cpu or cuda"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DeviceMeta(tc.backend, tc.gpus, tc.visible)
			if !maps.Equal(got, tc.want) {
				t.Errorf("meta %v, want %v", got, tc.want)
			}
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("err %v, want one saying %q", err, tc.err)
			}
		})
	}
}

func TestDeviceString(t *testing.T) {
	for _, tc := range []struct {
		meta map[string]string
		want string
	}{
		{nil, "-"},
		{map[string]string{MetaBackend: "cpu"}, "cpu"},
		{map[string]string{MetaBackend: "cuda", MetaGPUIndex: "1"}, "cuda:1"},
		{map[string]string{MetaBackend: "cuda", MetaGPUIndex: "0", MetaGPUUUID: "GPU-aaaa1111-0000", MetaGPUName: "NVIDIA H100 80GB HBM3",
			MetaGPUFreeMiB: "80000", MetaGPUTotalMiB: "81559"}, "cuda:0 NVIDIA H100 80GB HBM3 GPU-aaaa1111… 80000/81559 MiB free"},
	} {
		if got := DeviceString(tc.meta); got != tc.want {
			t.Errorf("DeviceString(%v) = %q, want %q", tc.meta, got, tc.want)
		}
	}
}

type fakeBackend struct {
	name string
	dev  *kernels.Device
}

func (f fakeBackend) Name() string { return f.name }

type fakeDevice struct{ fakeBackend }

func (f fakeDevice) Device() (kernels.Device, error) { return *f.dev, nil }

func TestGPUInfo(t *testing.T) {
	cpu := GPUInfo(fakeBackend{name: "cpu"})
	if len(cpu) != 1 || cpu[0].GetIndex() != -1 || cpu[0].GetName() != "cpu" || cpu[0].GetBackend() != "cpu" {
		t.Errorf("cpu backend: %v, want one entry {index -1, name cpu, backend cpu}", cpu)
	}
	dv := &kernels.Device{Index: 1, Name: "NVIDIA H200", UUID: "GPU-1", MemoryTotalMiB: 143771, MemoryFreeMiB: 100000}
	gpu := GPUInfo(fakeDevice{fakeBackend{name: "cuda:1", dev: dv}})
	if len(gpu) != 1 {
		t.Fatalf("cuda backend: %d entries, want 1", len(gpu))
	}
	g := gpu[0]
	if g.GetIndex() != 1 || g.GetName() != "NVIDIA H200" || g.GetUuid() != "GPU-1" || g.GetBackend() != "cuda:1" ||
		g.GetMemoryTotalMib() != 143771 || g.GetMemoryFreeMib() != 100000 {
		t.Errorf("cuda backend: %v, want the device's fields", g)
	}
}
