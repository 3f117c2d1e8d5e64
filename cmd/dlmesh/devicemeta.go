package main

import (
	"log/slog"
	"os"
	"strings"

	"github.com/dlmesh/dlmesh/kernels/cuda/nvml"
	"github.com/dlmesh/dlmesh/services"
)

// deviceMeta is the services' Config.DeviceMeta: for a CUDA backend it reads NVML's devices (NVML
// stays initialised for the process) so the registration names the GPU (UUID, name, free and
// total memory); the CPU backend gives backend=cpu. Problems are warnings: registration goes on
// with what is known.
func deviceMeta(backend string) map[string]string {
	var gpus []services.GPU
	if strings.HasPrefix(backend, "cuda") {
		if err := nvml.Init(); err != nil {
			slog.Warn("registration meta without GPU identity", "err", err)
		} else if devs, err := nvml.Devices(); err != nil {
			slog.Warn("registration meta without GPU identity", "err", err)
		} else {
			gpus = make([]services.GPU, 0, len(devs))
			for _, d := range devs {
				gpus = append(gpus, services.GPU{Index: d.Index, UUID: d.UUID, Name: d.Name,
					MemoryFreeMiB: d.MemoryFreeMiB, MemoryTotalMiB: d.MemoryTotalMiB})
			}
		}
	}
	meta, err := services.DeviceMeta(backend, gpus, os.Getenv("CUDA_VISIBLE_DEVICES"))
	if err != nil && gpus != nil {
		slog.Warn("registration meta", "err", err)
	}
	return meta
}
