package diffusion

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/errdefs"
)

func TestPreset(t *testing.T) {
	for _, c := range []struct {
		name          string
		mask, edit    float64
		editOff       bool
		post, bl, gen int
	}{
		{"q", 0.7, 0.5, false, 16, 32, 64},
		{"s", 0.5, 0.0, false, 16, 32, 64},
		{"v20", 0.95, 0, true, 0, 32, 64},
	} {
		p, err := Preset(c.name)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if p.TauMask != c.mask || p.TauEdit != c.edit || p.EditOff != c.editOff || p.MaxPostSteps != c.post ||
			p.BlockLen != c.bl || p.GenLen != c.gen || p.Temperature != 0 || p.TopK != 0 || p.TopP != 1 {
			t.Errorf("%s: %+v", c.name, p)
		}
		if err := p.Validate(); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	_, err := Preset("fast")
	var pe *ParamError
	if !errors.As(err, &pe) || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "q, s, v20") {
		t.Fatalf("unknown preset: %v", err)
	}
}

func TestValidate(t *testing.T) {
	nan := math.NaN()
	cases := []struct {
		field string
		mod   func(*Params)
	}{
		{"tau_mask", func(p *Params) { p.TauMask = 0 }},
		{"tau_mask", func(p *Params) { p.TauMask = 1.5 }},
		{"tau_mask", func(p *Params) { p.TauMask = nan }},
		{"tau_edit", func(p *Params) { p.TauEdit = -0.1 }},
		{"tau_edit", func(p *Params) { p.TauEdit = 1.01 }},
		{"tau_edit", func(p *Params) { p.TauEdit = nan }},
		{"max_post_steps", func(p *Params) { p.MaxPostSteps = -1 }},
		{"max_post_steps", func(p *Params) { p.MaxPostSteps = 1025 }},
		{"block_length", func(p *Params) { p.BlockLen = 0 }},
		{"block_length", func(p *Params) { p.BlockLen = 4097 }},
		{"gen_length", func(p *Params) { p.GenLen = 0 }},
		{"gen_length", func(p *Params) { p.GenLen = MaxGenLen + 1 }},
		{"temperature", func(p *Params) { p.Temperature = -1 }},
		{"temperature", func(p *Params) { p.Temperature = 10.5 }},
		{"temperature", func(p *Params) { p.Temperature = nan }},
		{"top_k", func(p *Params) { p.TopK = -1 }},
		{"top_k", func(p *Params) { p.TopK = MaxTopK + 1 }},
		{"top_p", func(p *Params) { p.TopP = 0 }},
		{"top_p", func(p *Params) { p.TopP = 1.1 }},
		{"stop_strings", func(p *Params) { p.StopStrings = make([]string, 17) }},
		{"stop_strings", func(p *Params) { p.StopStrings = []string{"ok", ""} }},
		{"stop_strings", func(p *Params) { p.StopStrings = []string{strings.Repeat("x", 257)} }},
	}
	for _, c := range cases {
		p, _ := Preset("q")
		c.mod(&p)
		err := p.Validate()
		var pe *ParamError
		if !errors.As(err, &pe) || pe.Field != c.field || !errors.Is(err, errdefs.ErrInvalidArgument) ||
			!strings.Contains(err.Error(), " "+c.field+" ") {
			t.Errorf("%s: got %v", c.field, err)
		}
	}

	p, _ := Preset("q")
	p.TauMask = 1.5
	if got, want := p.Validate().Error(), "diffusion: invalid tau_mask 1.5: want a value in (0, 1]"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}

	ok := []func(*Params){
		func(p *Params) { p.TauMask, p.TauEdit = 1, 1 },
		func(p *Params) { p.TauEdit = 0 },
		func(p *Params) { p.EditOff, p.TauEdit = true, 7 }, // ignored when editing is off
		func(p *Params) { p.MaxPostSteps, p.BlockLen, p.GenLen = 1024, 4096, MaxGenLen },
		func(p *Params) { p.Temperature, p.TopK, p.TopP = 10, 50, 0.01 },
		func(p *Params) { p.StopStrings = []string{"\n\n", strings.Repeat("x", 256)} },
	}
	for i, mod := range ok {
		p, _ := Preset("q")
		mod(&p)
		if err := p.Validate(); err != nil {
			t.Errorf("valid #%d: %v", i, err)
		}
	}
}

func TestBlockWarning(t *testing.T) {
	p, _ := Preset("q")
	if w := p.BlockWarning(32); w != "" {
		t.Errorf("same block length warns: %q", w)
	}
	p.BlockLen = 16
	if w := p.BlockWarning(32); !strings.Contains(w, "16") || !strings.Contains(w, "32") {
		t.Errorf("warning %q", w)
	}
}
