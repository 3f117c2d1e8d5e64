package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

const tinyModelDir = "../models/llada2-tiny-go"

// tinyConfigJSON returns the bundled tiny config.json as a map to mutate.
func tinyConfigJSON(tb testing.TB) map[string]any {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(tinyModelDir, "config.json"))
	if err != nil {
		tb.Fatalf("read tiny config: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatalf("tiny config: %v", err)
	}
	return m
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestLoadConfigTiny(t *testing.T) {
	c, err := LoadConfig(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		ModelType: "llada2_moe", Vocab: 8192, Hidden: 256, Layers: 8, Heads: 4, KVHeads: 2, HeadDim: 64, RotaryDim: 32,
		Intermediate: 768, MoEIntermediate: 128, Experts: 16, TopK: 4, SharedExperts: 1, NGroup: 4, TopKGroup: 2, FirstKDense: 1,
		RoutedScale: 2.5, NormTopK: true, ScoreFunction: "sigmoid", ExpertBias: true,
		Eps: 1e-6, RopeTheta: 600000, MaxPositions: 4096, UseQKNorm: true,
		EOSID: 8187, BOSID: 8186, PadID: 8187,
	}
	got := *c
	got.Raw = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("tiny config:\n got %+v\nwant %+v", got, want)
	}
	if c.Raw["router_dtype"] != "fp32" || c.Raw["num_experts"] != float64(16) {
		t.Errorf("Raw lacks fields: router_dtype=%v num_experts=%v", c.Raw["router_dtype"], c.Raw["num_experts"])
	}
	if got, want := c.MoELayers(), []int{1, 2, 3, 4, 5, 6, 7}; !reflect.DeepEqual(got, want) {
		t.Errorf("MoELayers = %v, want %v", got, want)
	}
	for i, want := range []bool{false, true, true, true, true, true, true, true, false} {
		if got := c.IsMoELayer(i); got != want {
			t.Errorf("IsMoELayer(%d) = %v, want %v", i, got, want)
		}
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	if _, err := LoadConfig(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadConfig(empty dir) = %v, want ErrNotExist", err)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	m := tinyConfigJSON(t)
	for _, k := range []string{"rotary_dim", "partial_rotary_factor", "head_dim", "num_key_value_heads", "n_group", "topk_group",
		"num_shared_experts", "routed_scaling_factor", "norm_topk_prob", "score_function", "use_qk_norm",
		"eos_token_id", "bos_token_id", "pad_token_id", "hidden_act", "rope_scaling", "moe_router_enable_expert_bias"} {
		delete(m, k)
	}
	c, err := ParseConfig(mustJSON(t, m))
	if err != nil {
		t.Fatal(err)
	}
	if c.HeadDim != 64 || c.RotaryDim != 64 || c.KVHeads != 4 || c.NGroup != 1 || c.TopKGroup != 1 || c.SharedExperts != 0 ||
		c.RoutedScale != 1 || !c.NormTopK || c.ScoreFunction != "sigmoid" || !c.UseQKNorm || !c.ExpertBias ||
		c.EOSID != -1 || c.BOSID != -1 || c.PadID != -1 {
		t.Errorf("defaults not applied: %+v", *c)
	}

	m = tinyConfigJSON(t)
	delete(m, "rotary_dim")
	m["eos_token_id"] = []any{8187, 8100}
	c, err = ParseConfig(mustJSON(t, m))
	if err != nil {
		t.Fatal(err)
	}
	if c.RotaryDim != 32 || c.EOSID != 8187 {
		t.Errorf("RotaryDim = %d (want 32 from partial_rotary_factor), EOSID = %d (want 8187, the first of the list)", c.RotaryDim, c.EOSID)
	}
}

func TestParseConfigRefusals(t *testing.T) {
	const drop = "<delete>"
	cases := []struct {
		name string
		set  map[string]any
		want string
	}{
		{"not json", nil, "not a JSON object"},
		{"model type", map[string]any{"model_type": "llama"}, `model_type "llama" not supported (want "llada2_moe")`},
		{"model type missing", map[string]any{"model_type": drop}, "model_type missing"},
		{"score function", map[string]any{"score_function": "softmax"}, `model: config.json: score_function "softmax" not supported (want "sigmoid")`},
		{"qkv bias", map[string]any{"use_qkv_bias": true}, "use_qkv_bias true not supported"},
		{"bias", map[string]any{"use_bias": true}, "use_bias true not supported"},
		{"rope scaling", map[string]any{"rope_scaling": map[string]any{"type": "yarn", "factor": 4}}, "rope_scaling {"},
		{"rope scaling says why", map[string]any{"rope_scaling": map[string]any{"type": "linear"}}, "not supported (want null"},
		{"hidden act", map[string]any{"hidden_act": "gelu"}, `hidden_act "gelu" not supported (want "silu")`},
		{"heads per kv head", map[string]any{"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"},
		{"experts per group", map[string]any{"n_group": 3}, "num_experts 16 is not a multiple of n_group 3"},
		{"topk group", map[string]any{"topk_group": 5}, "topk_group 5 not in [1, n_group 4]"},
		{"top-k over experts", map[string]any{"num_experts_per_tok": 17}, "num_experts_per_tok 17 not in [1, num_experts 16]"},
		{"top-k over kept groups", map[string]any{"num_experts_per_tok": 9}, "num_experts_per_tok 9 exceeds the 8 experts of topk_group 2 groups"},
		{"rotary odd", map[string]any{"rotary_dim": 31, "partial_rotary_factor": drop}, "rotary_dim 31 not supported (want an even number in [2, head_dim 64])"},
		{"rotary over head dim", map[string]any{"rotary_dim": 66, "partial_rotary_factor": drop}, "rotary_dim 66 not supported"},
		{"rotary disagrees", map[string]any{"rotary_dim": 48}, "rotary_dim 48 disagrees with head_dim·partial_rotary_factor = 32"},
		{"rotary factor", map[string]any{"partial_rotary_factor": 1.5, "rotary_dim": drop}, "partial_rotary_factor 1.5 not in (0, 1]"},
		{"moe intermediate zero", map[string]any{"moe_intermediate_size": 0}, "moe_intermediate_size 0 must be positive when num_experts 16 > 0"},
		{"moe intermediate missing", map[string]any{"moe_intermediate_size": drop}, "moe_intermediate_size missing (required)"},
		{"first dense over layers", map[string]any{"first_k_dense_replace": 9}, "first_k_dense_replace 9 not in [0, num_hidden_layers 8]"},
		{"tied embeddings", map[string]any{"tie_word_embeddings": true}, "tie_word_embeddings true not supported"},
		{"vocab missing", map[string]any{"vocab_size": drop}, "vocab_size missing (required)"},
		{"hidden missing", map[string]any{"hidden_size": drop}, "hidden_size missing (required)"},
		{"layers missing", map[string]any{"num_hidden_layers": drop}, "num_hidden_layers missing (required)"},
		{"heads missing", map[string]any{"num_attention_heads": drop}, "num_attention_heads missing (required)"},
		{"intermediate missing", map[string]any{"intermediate_size": drop}, "intermediate_size missing (required)"},
		{"top-k missing", map[string]any{"num_experts_per_tok": drop}, "num_experts_per_tok missing (required)"},
		{"eps missing", map[string]any{"rms_norm_eps": drop}, "rms_norm_eps missing (required)"},
		{"theta missing", map[string]any{"rope_theta": drop}, "rope_theta missing (required)"},
		{"max positions missing", map[string]any{"max_position_embeddings": drop}, "max_position_embeddings missing (required)"},
		{"hidden not integer", map[string]any{"hidden_size": 256.5}, "hidden_size 256.5 is not an integer"},
		{"hidden a string", map[string]any{"hidden_size": "256"}, `hidden_size "256" is not an integer`},
		{"hidden negative", map[string]any{"hidden_size": -256}, "hidden_size -256 must be positive"},
		{"flag not bool", map[string]any{"use_qk_norm": "yes"}, `use_qk_norm "yes" is not a boolean`},
		{"eps zero", map[string]any{"rms_norm_eps": 0}, "rms_norm_eps 0 must be positive"},
		{"theta negative", map[string]any{"rope_theta": -1}, "rope_theta -1 must be positive"},
		{"scale zero", map[string]any{"routed_scaling_factor": 0}, "routed_scaling_factor 0 must be positive"},
		{"eos out of vocab", map[string]any{"eos_token_id": 9000}, "eos_token_id 9000 not in [0, vocab_size 8192)"},
		{"eos not an id", map[string]any{"eos_token_id": -5}, "eos_token_id -5 is not a token id"},
		{"head dim needed", map[string]any{"head_dim": drop, "hidden_size": 258}, "head_dim missing and hidden_size 258 is not a multiple of num_attention_heads 4"},
		{"dense without intermediate", map[string]any{"intermediate_size": 0}, "intermediate_size 0 must be positive"},
		{"negative experts", map[string]any{"num_experts": -1}, "num_experts -1 must not be negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte("[1, 2]")
			if tc.set != nil {
				m := tinyConfigJSON(t)
				for k, v := range tc.set {
					if v == drop {
						delete(m, k)
					} else {
						m[k] = v
					}
				}
				data = mustJSON(t, m)
			}
			c, err := ParseConfig(data)
			if err == nil {
				t.Fatalf("ParseConfig accepted it: %+v", c)
			}
			if !errors.Is(err, ErrBadConfig) {
				t.Errorf("error %v does not match ErrBadConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "model: config.json: ") {
				t.Errorf("error %q lacks the package and file prefix", err)
			}
		})
	}
}

func TestConfigAllDense(t *testing.T) {
	m := tinyConfigJSON(t)
	m["num_experts"] = 0
	c, err := ParseConfig(mustJSON(t, m))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.MoELayers()) != 0 || c.IsMoELayer(3) {
		t.Errorf("a config without experts has MoE layers %v", c.MoELayers())
	}
	if p := c.Params(); p.RoutedExperts != 0 || p.ActivePerToken != p.Total {
		t.Errorf("dense params: %+v", p)
	}
}

func TestRealShapes(t *testing.T) {
	cases := []struct {
		name                  string
		c                     *Config
		hidden, layers, heads int
		total, active         float64 // billions, ±5%
	}{
		{"mini", MiniConfig(), 2048, 20, 16, 16.3, 1.44},
		{"flash", FlashConfig(), 4096, 32, 32, 100.6, 6.1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			if c.Hidden != tc.hidden || c.Layers != tc.layers || c.Heads != tc.heads || c.KVHeads != 4 || c.HeadDim != 128 ||
				c.RotaryDim != 64 || c.Experts != 256 || c.TopK != 8 || c.Vocab != 157184 {
				t.Errorf("shape: %+v", *c)
			}
			// Raw is a config.json that parses back to the same Config.
			back, err := ParseConfig(mustJSON(t, c.Raw))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, c) {
				t.Errorf("round trip through Raw:\n got %+v\nwant %+v", *back, *c)
			}
			p := c.Params()
			t.Logf("%s: total %d, active %d, routed %d, per expert %d", tc.name, p.Total, p.ActivePerToken, p.RoutedExperts, p.PerExpert)
			within := func(what string, got int64, wantB float64) {
				if g := float64(got) / 1e9; g < wantB*0.95 || g > wantB*1.05 {
					t.Errorf("%s = %.3fB, want about %.2fB", what, g, wantB)
				}
			}
			within("Total", p.Total, tc.total)
			within("ActivePerToken", p.ActivePerToken, tc.active)
		})
	}
}

// expectedTensors lists every tensor the config implies, with its shape.
func expectedTensors(c *Config) map[string][]int {
	h := c.Hidden
	w := map[string][]int{
		"model.word_embeddings.weight": {c.Vocab, h},
		"model.norm.weight":            {h},
		"lm_head.weight":               {c.Vocab, h},
	}
	ffn := func(p string, inter int) {
		w[p+"gate_proj.weight"] = []int{inter, h}
		w[p+"up_proj.weight"] = []int{inter, h}
		w[p+"down_proj.weight"] = []int{h, inter}
	}
	for i := 0; i < c.Layers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		w[p+"input_layernorm.weight"] = []int{h}
		w[p+"post_attention_layernorm.weight"] = []int{h}
		w[p+"attention.query_key_value.weight"] = []int{(c.Heads + 2*c.KVHeads) * c.HeadDim, h}
		w[p+"attention.dense.weight"] = []int{h, c.Heads * c.HeadDim}
		if c.UseQKNorm {
			w[p+"attention.query_layernorm.weight"] = []int{c.HeadDim}
			w[p+"attention.key_layernorm.weight"] = []int{c.HeadDim}
		}
		if !c.IsMoELayer(i) {
			ffn(p+"mlp.", c.Intermediate)
			continue
		}
		w[p+"mlp.gate.weight"] = []int{c.Experts, h}
		if c.ExpertBias {
			w[p+"mlp.gate.expert_bias"] = []int{c.Experts}
		}
		if c.SharedExperts > 0 {
			ffn(p+"mlp.shared_experts.", c.MoEIntermediate*c.SharedExperts)
		}
		for e := 0; e < c.Experts; e++ {
			ffn(fmt.Sprintf("%smlp.experts.%d.", p, e), c.MoEIntermediate)
		}
	}
	return w
}

// TestParamsMatchCheckpoint checks Params against the bundled checkpoint: the same tensor set
// with the same shapes, and the element sums per category.
func TestParamsMatchCheckpoint(t *testing.T) {
	c, err := LoadConfig(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	p := c.Params()
	if p.Total != 18_089_216 || p.StoredValues != 18_089_328 {
		t.Errorf("Total = %d (want 18,089,216), StoredValues = %d (want 18,089,328)", p.Total, p.StoredValues)
	}
	if p.PerExpert != 3*256*128 || p.Embedding != 8192*256 || p.LMHead != 8192*256 {
		t.Errorf("PerExpert %d, Embedding %d, LMHead %d", p.PerExpert, p.Embedding, p.LMHead)
	}
	if want := p.Total - p.RoutedExperts + 7*4*p.PerExpert; p.ActivePerToken != want || p.Attention != p.Total-p.RoutedExperts {
		t.Errorf("ActivePerToken %d (want %d), Attention %d", p.ActivePerToken, want, p.Attention)
	}

	ck, err := OpenCheckpoint(tinyModelDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	want := expectedTensors(c)
	if got := ck.Names(); len(got) != len(want) {
		t.Errorf("checkpoint holds %d tensors, the config implies %d", len(got), len(want))
	}
	var total, bias, routed, emb, head int64
	for name, shape := range want {
		dts := []kernels.DType{kernels.BF16}
		if strings.HasSuffix(name, "expert_bias") {
			dts = []kernels.DType{kernels.F32}
		}
		ti, err := ck.Expect(name, dts, shape...)
		if err != nil {
			t.Error(err)
			continue
		}
		n := int64(len(ti.Data) / ti.DType.Size())
		switch {
		case strings.HasSuffix(name, "expert_bias"):
			bias += n
			continue
		case strings.Contains(name, ".mlp.experts."):
			routed += n
		case name == "model.word_embeddings.weight":
			emb += n
		case name == "lm_head.weight":
			head += n
		}
		total += n
	}
	if total != p.Total || total+bias != p.StoredValues || routed != p.RoutedExperts || emb != p.Embedding || head != p.LMHead {
		t.Errorf("checkpoint sums: total %d, +bias %d, routed %d, embedding %d, lm head %d; Params %+v", total, total+bias, routed, emb, head, p)
	}
}
