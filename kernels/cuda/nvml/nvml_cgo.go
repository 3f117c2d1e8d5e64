//go:build cgo

package nvml

import (
	"fmt"
	"sync"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

var (
	mu    sync.Mutex
	ready bool
)

// Init loads NVML and initialises it. Calling it again after success is a no-op.
func Init() (err error) {
	mu.Lock()
	defer mu.Unlock()
	if ready {
		return nil
	}
	defer func() { // go-nvml panics when the library cannot be loaded in some versions
		if r := recover(); r != nil {
			err = fmt.Errorf("nvml: init: %v", r)
		}
	}()
	if ret := gonvml.Init(); ret != gonvml.SUCCESS {
		return fmt.Errorf("nvml: init: %s", errString(ret))
	}
	ready = true
	return nil
}

// Shutdown releases NVML; safe without Init.
func Shutdown() {
	mu.Lock()
	defer mu.Unlock()
	if ready {
		gonvml.Shutdown()
		ready = false
	}
}

// Devices returns the readings of every device.
func Devices() ([]GPU, error) {
	mu.Lock()
	defer mu.Unlock()
	if !ready {
		return nil, ErrNotInitialized
	}
	n, ret := gonvml.DeviceGetCount()
	if ret != gonvml.SUCCESS {
		return nil, fmt.Errorf("nvml: device count: %s", errString(ret))
	}
	gpus := make([]GPU, 0, n)
	for i := 0; i < n; i++ {
		d, ret := gonvml.DeviceGetHandleByIndex(i)
		if ret != gonvml.SUCCESS {
			return nil, fmt.Errorf("nvml: device %d: %s", i, errString(ret))
		}
		g := GPU{Index: i}
		g.Name, _ = d.GetName()
		g.UUID, _ = d.GetUUID()
		if m, ret := d.GetMemoryInfo(); ret == gonvml.SUCCESS {
			g.MemoryTotalMiB, g.MemoryUsedMiB, g.MemoryFreeMiB = m.Total>>20, m.Used>>20, m.Free>>20
		}
		if u, ret := d.GetUtilizationRates(); ret == gonvml.SUCCESS {
			g.UtilPercent = u.Gpu
		}
		if t, ret := d.GetTemperature(gonvml.TEMPERATURE_GPU); ret == gonvml.SUCCESS {
			g.TemperatureC = t
		}
		if p, ret := d.GetPowerUsage(); ret == gonvml.SUCCESS {
			g.PowerW = float64(p) / 1000
		}
		gpus = append(gpus, g)
	}
	return gpus, nil
}

func errString(r gonvml.Return) string {
	if r == gonvml.ERROR_LIBRARY_NOT_FOUND {
		return "library libnvidia-ml.so.1 not found"
	}
	return fmt.Sprintf("%s (%d)", gonvml.ErrorString(r), int(r))
}
