package main

import (
	"context"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/dlmesh/dlmesh/kernels"
	"github.com/dlmesh/dlmesh/model"
)

// loadModel loads the attention part (when attention) and the routed experts `experts` (nil:
// all of them) from dir onto be, with a progress bar on stderr when it is a terminal.
func loadModel(ctx context.Context, dir string, be kernels.Backend, attention bool, experts []int) (*model.Model, error) {
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	if experts == nil {
		experts = model.AllExperts(cfg.Experts)
	}
	opts := model.LoadOptions{Attention: attention, Experts: experts}
	if term.IsTerminal(int(os.Stderr.Fd())) {
		var bar *progressbar.ProgressBar
		opts.Progress = func(done, total int64) {
			if bar == nil {
				bar = progressbar.NewOptions64(total,
					progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionSetDescription("loading "+dir),
					progressbar.OptionShowBytes(true),
					progressbar.OptionClearOnFinish(),
					progressbar.OptionThrottle(100_000_000))
			}
			_ = bar.Set64(done)
			if done >= total {
				_ = bar.Finish()
			}
		}
	}
	return model.Load(ctx, dir, be, opts)
}
