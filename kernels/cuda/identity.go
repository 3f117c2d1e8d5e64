package cuda

import (
	"fmt"

	"github.com/dlmesh/dlmesh/kernels"
)

// DeviceUUID is the UUID the driver gives CUDA device ordinal (as the process sees it, after
// CUDA_VISIBLE_DEVICES), in NVML's form "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", so a
// service can name the NVML device it computes on exactly. It needs no context.
func DeviceUUID(ordinal int) (string, error) {
	d, err := loadDriver()
	if err != nil {
		return "", fmt.Errorf("cuda: %w: %w", kernels.ErrNoDevice, err)
	}
	return d.deviceUUID(ordinal)
}

func (d *driver) deviceUUID(ordinal int) (string, error) {
	if d.cuDeviceGetUuid == nil {
		return "", fmt.Errorf("cuda: device %d: the driver has no cuDeviceGetUuid", ordinal)
	}
	if err := d.check("cuInit", d.cuInit(0)); err != nil {
		return "", fmt.Errorf("cuda: device %d: %w", ordinal, err)
	}
	var dev int32
	if err := d.check("cuDeviceGet", d.cuDeviceGet(&dev, int32(ordinal))); err != nil {
		return "", fmt.Errorf("cuda: device %d: %w", ordinal, err)
	}
	var u [16]byte
	if err := d.check("cuDeviceGetUuid", d.cuDeviceGetUuid(&u, dev)); err != nil {
		return "", fmt.Errorf("cuda: device %d: %w", ordinal, err)
	}
	return formatUUID(u), nil
}

// formatUUID writes 16 UUID bytes as NVML does: "GPU-" and 8-4-4-4-12 lowercase hex digits.
func formatUUID(u [16]byte) string {
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
