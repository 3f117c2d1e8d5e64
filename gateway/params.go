package gateway

import (
	"github.com/dlmesh/dlmesh/diffusion"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// Params maps the request's DecodeParams onto diffusion.Params: the mode's preset ("" means
// "q"), then every field the request sets. Zero gen_length and block_length keep the preset's,
// top_p 0 means off (1); tau_edit turns editing back on unless edit_off is also set. The result
// is validated; an error is a *diffusion.ParamError naming the field and its range.
func Params(dp *pb.DecodeParams) (diffusion.Params, error) {
	if dp == nil {
		dp = &pb.DecodeParams{}
	}
	mode := dp.GetMode()
	if mode == "" {
		mode = "q"
	}
	p, err := diffusion.Preset(mode)
	if err != nil {
		return p, err
	}
	if dp.TauMask != nil {
		p.TauMask = dp.GetTauMask()
	}
	if dp.TauEdit != nil {
		p.TauEdit = dp.GetTauEdit()
		p.EditOff = false
	}
	if dp.EditOff != nil {
		p.EditOff = dp.GetEditOff()
	}
	if dp.MaxPostSteps != nil {
		p.MaxPostSteps = int(dp.GetMaxPostSteps())
	}
	if dp.GetGenLength() != 0 {
		p.GenLen = int(dp.GetGenLength())
	}
	if dp.GetBlockLength() != 0 {
		p.BlockLen = int(dp.GetBlockLength())
	}
	p.Temperature = dp.GetTemperature()
	p.TopK = int(dp.GetTopK())
	p.TopP = dp.GetTopP()
	if p.TopP == 0 {
		p.TopP = 1
	}
	p.Seed = dp.GetSeed()
	p.StopStrings = dp.GetStop()
	return p, p.Validate()
}
