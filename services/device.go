package services

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dlmesh/dlmesh/kernels"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// Registration meta keys saying what device a service computes on (set by DeviceMeta).
const (
	MetaBackend     = "backend"           // "cpu" or "cuda"
	MetaGPUIndex    = "gpu_index"         // CUDA device ordinal in the process
	MetaGPUUUID     = "gpu_uuid"          // NVML's device UUID, "GPU-…"
	MetaGPUName     = "gpu_name"          // e.g. "NVIDIA H100 80GB HBM3"
	MetaGPUFreeMiB  = "gpu_mem_free_mib"  // free device memory when the instance registered
	MetaGPUTotalMiB = "gpu_mem_total_mib" // total device memory
)

// GPU is one device as NVML lists it (cmd converts nvml.GPU; services does not load NVML).
type GPU struct {
	Index                         int // NVML index (PCI bus order)
	UUID, Name                    string
	MemoryFreeMiB, MemoryTotalMiB uint64
}

// DeviceMeta is the registration meta of a service running on backend ("cpu", "cuda" or
// "cuda:N"). The CPU backend gives backend=cpu. A CUDA backend gives backend=cuda and the
// ordinal, and, when gpus (NVML's devices; nil when NVML did not initialise) has the device, its
// UUID, name and free/total memory. The ordinal is mapped to an NVML device through visible
// ($CUDA_VISIBLE_DEVICES: ordinal N is its Nth entry, an NVML index or a UUID prefix), or taken
// as the NVML index when visible is empty — which holds when CUDA_DEVICE_ORDER=PCI_BUS_ID or the
// devices are alike. The meta is always usable; the error says why the GPU fields are missing.
func DeviceMeta(backend string, gpus []GPU, visible string) (map[string]string, error) {
	name, ord, isCUDA := strings.Cut(backend, ":")
	switch {
	case backend == "" || backend == "cpu":
		return map[string]string{MetaBackend: "cpu"}, nil
	case name != "cuda":
		return map[string]string{MetaBackend: backend}, fmt.Errorf("services: device meta: backend %q: want cpu or cuda[:N]", backend)
	}
	n := 0
	if isCUDA {
		var err error
		if n, err = strconv.Atoi(ord); err != nil || n < 0 {
			return map[string]string{MetaBackend: "cuda"}, fmt.Errorf("services: device meta: backend %q: want cuda:N with N a device ordinal", backend)
		}
	}
	meta := map[string]string{MetaBackend: "cuda", MetaGPUIndex: strconv.Itoa(n)}
	if gpus == nil {
		return meta, fmt.Errorf("services: device meta: cuda:%d: no NVML device list", n)
	}
	match := func(g GPU) bool { return g.Index == n }
	if v := strings.TrimSpace(visible); v != "" {
		entries := strings.Split(v, ",")
		if n >= len(entries) {
			return meta, fmt.Errorf("services: device meta: cuda:%d: CUDA_VISIBLE_DEVICES=%q has %d entries", n, visible, len(entries))
		}
		e := strings.TrimSpace(entries[n])
		if idx, err := strconv.Atoi(e); err == nil {
			match = func(g GPU) bool { return g.Index == idx }
		} else if strings.HasPrefix(e, "GPU-") {
			match = func(g GPU) bool { return strings.HasPrefix(g.UUID, e) }
		} else {
			return meta, fmt.Errorf("services: device meta: cuda:%d: CUDA_VISIBLE_DEVICES entry %q is neither an index nor a GPU UUID", n, e)
		}
	}
	for _, g := range gpus {
		if match(g) {
			meta[MetaGPUUUID] = g.UUID
			meta[MetaGPUName] = g.Name
			meta[MetaGPUFreeMiB] = strconv.FormatUint(g.MemoryFreeMiB, 10)
			meta[MetaGPUTotalMiB] = strconv.FormatUint(g.MemoryTotalMiB, 10)
			return meta, nil
		}
	}
	return meta, fmt.Errorf("services: device meta: cuda:%d: not among NVML's %d devices", n, len(gpus))
}

// DeviceString describes the device of registration meta for people: "cpu", "cuda:0 NVIDIA H100
// 80GB HBM3 GPU-5c3e… 1234/81559 MiB free", or "-" when the meta does not say.
func DeviceString(meta map[string]string) string {
	b := meta[MetaBackend]
	if b != "cuda" {
		if b == "" {
			return "-"
		}
		return b
	}
	s := "cuda:" + meta[MetaGPUIndex]
	if name := meta[MetaGPUName]; name != "" {
		s += " " + name
	}
	if u := meta[MetaGPUUUID]; u != "" {
		if len(u) > 12 {
			u = u[:12] + "…"
		}
		s += " " + u
	}
	if t := meta[MetaGPUTotalMiB]; t != "" {
		s += fmt.Sprintf(" %s/%s MiB free", meta[MetaGPUFreeMiB], t)
	}
	return s
}

// InstanceDeviceMeta is the device meta of a service on backend: from f when set, else
// DeviceMeta without NVML's devices (the error, which only says they are missing, is dropped).
// The map is the caller's.
func InstanceDeviceMeta(f func(backend string) map[string]string, backend string) map[string]string {
	var meta map[string]string
	if f != nil {
		meta = f(backend)
	} else {
		meta, _ = DeviceMeta(backend, nil, "")
	}
	out := make(map[string]string, len(meta)+2)
	for k, v := range meta {
		out[k] = v
	}
	return out
}

// GPUInfo is what a service's Info reports of the backend it computes on: for a device backend
// (kernels.Describer) the device's ordinal, name, UUID and memory as its driver reports them now;
// for the CPU backend one entry with index -1 and name "cpu". Backend is be.Name().
func GPUInfo(be interface{ Name() string }) []*pb.GPUInfo {
	d, ok := be.(kernels.Describer)
	if !ok {
		return []*pb.GPUInfo{{Index: -1, Name: "cpu", Backend: be.Name()}}
	}
	dv, err := d.Device() // on error the ordinal is still known
	g := &pb.GPUInfo{Index: int32(dv.Index), Name: dv.Name, Uuid: dv.UUID, Backend: be.Name(),
		MemoryTotalMib: int64(dv.MemoryTotalMiB), MemoryFreeMib: int64(dv.MemoryFreeMiB)}
	if err != nil && g.Name == "" {
		g.Name = "unknown"
	}
	return []*pb.GPUInfo{g}
}
