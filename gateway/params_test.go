package gateway

import (
	"errors"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/errdefs"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

func TestRenderChat(t *testing.T) {
	got, err := RenderChat([]Message{{"system", "Be brief."}, {"user", "hi"}})
	want := "<role>system</role>Be brief.<|role_end|><role>user</role>hi<|role_end|><role>assistant</role>"
	if err != nil || got != want {
		t.Errorf("RenderChat = %q, %v\nwant %q", got, err, want)
	}
	for _, bad := range [][]Message{nil, {{"", "x"}}, {{"User", "x"}}, {{"user", "a<|role_end|>b"}}} {
		if _, err := RenderChat(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("RenderChat(%v): %v, want errdefs.ErrInvalidArgument", bad, err)
		}
	}
}

func TestParams(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	b := func(v bool) *bool { return &v }
	i := func(v int32) *int32 { return &v }
	q, _ := diffusion.Preset("q")
	for _, tc := range []struct {
		name  string
		in    *pb.DecodeParams
		want  func(p *diffusion.Params)
		field string
	}{
		{name: "nil is q", in: nil, want: func(*diffusion.Params) {}},
		{name: "speedy", in: &pb.DecodeParams{Mode: "s"}, want: func(p *diffusion.Params) { *p, _ = diffusion.Preset("s") }},
		{name: "overrides", in: &pb.DecodeParams{TauMask: f(0.9), TauEdit: f(0.2), MaxPostSteps: i(3), GenLength: 100, BlockLength: 16,
			Temperature: 0.5, TopK: 5, TopP: 0.9, Seed: 7, Stop: []string{"\n\n"}},
			want: func(p *diffusion.Params) {
				p.TauMask, p.TauEdit, p.MaxPostSteps, p.GenLen, p.BlockLen = 0.9, 0.2, 3, 100, 16
				p.Temperature, p.TopK, p.TopP, p.Seed, p.StopStrings = 0.5, 5, 0.9, 7, []string{"\n\n"}
			}},
		{name: "tau_edit turns v20 editing on", in: &pb.DecodeParams{Mode: "v20", TauEdit: f(0.4)},
			want: func(p *diffusion.Params) { *p, _ = diffusion.Preset("v20"); p.TauEdit, p.EditOff = 0.4, false }},
		{name: "edit_off wins", in: &pb.DecodeParams{TauEdit: f(0.4), EditOff: b(true)},
			want: func(p *diffusion.Params) { p.TauEdit, p.EditOff = 0.4, true }},
		{name: "bad mode", in: &pb.DecodeParams{Mode: "z"}, field: "mode"},
		{name: "bad tau_mask", in: &pb.DecodeParams{TauMask: f(0)}, field: "tau_mask"},
		{name: "bad top_p", in: &pb.DecodeParams{TopP: -1}, field: "top_p"},
		{name: "bad max_post_steps", in: &pb.DecodeParams{MaxPostSteps: i(-1)}, field: "max_post_steps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Params(tc.in)
			if tc.field != "" {
				var pe *diffusion.ParamError
				if !errors.As(err, &pe) || pe.Field != tc.field || !strings.Contains(err.Error(), tc.field) {
					t.Fatalf("err %v, want a ParamError for %s", err, tc.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := q
			tc.want(&want)
			if got.TauMask != want.TauMask || got.TauEdit != want.TauEdit || got.EditOff != want.EditOff || got.MaxPostSteps != want.MaxPostSteps ||
				got.GenLen != want.GenLen || got.BlockLen != want.BlockLen || got.Temperature != want.Temperature || got.TopK != want.TopK ||
				got.TopP != want.TopP || got.Seed != want.Seed || strings.Join(got.StopStrings, "|") != strings.Join(want.StopStrings, "|") {
				t.Errorf("Params = %+v\nwant %+v", got, want)
			}
		})
	}
}
