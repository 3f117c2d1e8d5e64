package expertd_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/expertd"
	"github.com/dlmesh/dlmesh/kernels"
)

func TestConfigExpertActDType(t *testing.T) {
	for _, tc := range []struct {
		dt kernels.DType
		ok bool
	}{{0, true}, {kernels.F32, true}, {kernels.BF16, true}, {kernels.F16, false}} {
		err := expertd.Config{ModelDir: tinyDir, Experts: []int{0}, ExpertActDType: tc.dt}.Validate()
		if (err == nil) != tc.ok || (err != nil && (!errors.Is(err, expertd.ErrBadConfig) || !strings.Contains(err.Error(), "expert_act_dtype"))) {
			t.Errorf("expert activation dtype %v: %v", tc.dt, err)
		}
	}
}
