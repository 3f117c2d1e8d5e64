package attnd_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/services"
)

func TestConfigKVDType(t *testing.T) {
	for _, tc := range []struct {
		dt kernels.DType
		ok bool
	}{{0, true}, {kernels.F32, true}, {kernels.BF16, true}, {kernels.F16, false}, {kernels.I32, false}} {
		err := attnd.Config{ModelDir: tinyDir, KVDType: tc.dt}.Validate()
		if (err == nil) != tc.ok || (err != nil && (!errors.Is(err, attnd.ErrBadConfig) || !strings.Contains(err.Error(), "kv_dtype"))) {
			t.Errorf("kv dtype %v: %v", tc.dt, err)
		}
	}
	// The CPU backend has no bf16 cache: attnd refuses to start rather than fail every Open.
	_, err := attnd.New(context.Background(), attnd.Config{ModelDir: tinyDir, KVDType: kernels.BF16}, services.NewMemRegistry())
	if err == nil || !strings.Contains(err.Error(), "kv_dtype BF16") {
		t.Fatalf("attnd with a bf16 cache on the CPU backend: %v", err)
	}
}

func TestConfigPrefillChunk(t *testing.T) {
	for _, tc := range []struct {
		chunk int
		ok    bool
	}{{0, true}, {-1, true}, {1, true}, {attnd.DefaultPrefillChunk, true}, {attnd.MaxPrefillChunk, true}, {attnd.MaxPrefillChunk + 1, false}} {
		err := attnd.Config{ModelDir: tinyDir, PrefillChunk: tc.chunk}.Validate()
		if (err == nil) != tc.ok || (err != nil && (!errors.Is(err, attnd.ErrBadConfig) || !strings.Contains(err.Error(), "prefill_chunk"))) {
			t.Errorf("prefill chunk %d: %v", tc.chunk, err)
		}
	}
}
