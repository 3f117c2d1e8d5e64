package main

import (
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/dlmesh/dlmesh/kernels/cuda"
	"github.com/dlmesh/dlmesh/kernels/cuda/nvml"
	"github.com/dlmesh/dlmesh/services"
)

// deviceMeta is the services' Config.DeviceMeta: for a CUDA backend it reads NVML's devices (NVML
// stays initialised for the process) so the registration names the GPU (UUID, name, free and
// total memory); the CPU backend gives backend=cpu. The NVML device is the one whose UUID the
// CUDA driver gives the ordinal (cuDeviceGetUuid), so CUDA's and NVML's orders need not agree;
// without that UUID the ordinal is mapped through CUDA_VISIBLE_DEVICES. Problems are warnings:
// registration goes on with what is known.
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
	visible := os.Getenv("CUDA_VISIBLE_DEVICES")
	if gpus != nil {
		if n, ok := cudaOrdinal(backend); ok {
			if uuid, err := cuda.DeviceUUID(n); err != nil {
				slog.Warn("GPU identity by CUDA_VISIBLE_DEVICES order", "err", err)
			} else if pinned, ok := pinByUUID(gpus, n, uuid); ok {
				gpus, visible = pinned, ""
			} else {
				slog.Warn("CUDA device is none of NVML's devices", "device", n, "uuid", uuid, "nvml_devices", len(gpus))
			}
		}
	}
	meta, err := services.DeviceMeta(backend, gpus, visible)
	if err != nil && gpus != nil {
		slog.Warn("registration meta", "err", err)
	}
	return meta
}

// cudaOrdinal is N of "cuda" (0) or "cuda:N".
func cudaOrdinal(backend string) (int, bool) {
	name, ord, has := strings.Cut(backend, ":")
	if name != "cuda" {
		return 0, false
	}
	if !has {
		return 0, true
	}
	n, err := strconv.Atoi(ord)
	return n, err == nil && n >= 0
}

// pinByUUID is NVML's device with uuid alone, its Index set to the CUDA ordinal, so that
// services.DeviceMeta (which matches the ordinal to an index) names exactly that device.
func pinByUUID(gpus []services.GPU, ordinal int, uuid string) ([]services.GPU, bool) {
	for _, g := range gpus {
		if g.UUID == uuid {
			g.Index = ordinal
			return []services.GPU{g}, true
		}
	}
	return nil, false
}
