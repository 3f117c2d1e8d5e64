package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// Sentinels of the model package. Every config or checkpoint error matches one of them with
// errors.Is, and its message names the field, tensor or file at fault.
var (
	ErrBadConfig     = errors.New("model: bad config")
	ErrBadCheckpoint = errors.New("model: bad checkpoint")
	ErrMissingTensor = errors.New("model: missing tensor")
)

// ModelType is the only config.json model_type this package runs.
const ModelType = "llada2_moe"

// Config is a llada2_moe config.json (the BailingMoeV2 / Ling-2.0 shape), with HF names mapped
// onto Go ones. ParseConfig fills every field and validates the result.
type Config struct {
	ModelType string // model_type, always "llada2_moe"

	Vocab     int // vocab_size: rows of the embedding and of the LM head
	Hidden    int // hidden_size
	Layers    int // num_hidden_layers
	Heads     int // num_attention_heads
	KVHeads   int // num_key_value_heads (default Heads)
	HeadDim   int // head_dim (default Hidden/Heads)
	RotaryDim int // rotary_dim, else int(HeadDim·partial_rotary_factor) (default factor 1.0)

	Intermediate    int     // intermediate_size: the dense FFN of the first FirstKDense layers
	MoEIntermediate int     // moe_intermediate_size: one routed (or shared) expert
	Experts         int     // num_experts (0: every layer dense)
	TopK            int     // num_experts_per_tok
	SharedExperts   int     // num_shared_experts (default 0); one FFN of MoEIntermediate·SharedExperts
	NGroup          int     // n_group (default 1)
	TopKGroup       int     // topk_group (default 1)
	FirstKDense     int     // first_k_dense_replace (default 0): layers [0, FirstKDense) are dense
	RoutedScale     float32 // routed_scaling_factor (default 1.0)
	NormTopK        bool    // norm_topk_prob (default true)
	ScoreFunction   string  // score_function (default "sigmoid", the only one supported)
	ExpertBias      bool    // moe_router_enable_expert_bias (default true): mlp.gate.expert_bias exists

	Eps           float32 // rms_norm_eps
	RopeTheta     float64 // rope_theta
	MaxPositions  int     // max_position_embeddings
	TieEmbeddings bool    // tie_word_embeddings (must be false)
	UseQKNorm     bool    // use_qk_norm (default true)
	QKVBias       bool    // use_qkv_bias (must be false)
	Bias          bool    // use_bias (must be false)

	EOSID, BOSID, PadID int32 // eos_token_id (first of a list), bos_token_id, pad_token_id; -1 when absent

	Raw map[string]any // every field of config.json as encoding/json parsed it
}

// configError is a config.json problem; it matches ErrBadConfig.
type configError struct{ msg string }

func (e *configError) Error() string { return "model: config.json: " + e.msg }
func (e *configError) Unwrap() error { return ErrBadConfig }

func configErrf(format string, a ...any) error {
	return &configError{msg: fmt.Sprintf(format, a...)}
}

// LoadConfig reads and validates dir/config.json.
func LoadConfig(dir string) (*Config, error) {
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("model: load config: %w", err)
	}
	return ParseConfig(data)
}

// ParseConfig parses a config.json and validates it. Fields whose value this package cannot run
// (another activation, rope scaling, QKV bias, softmax routing, ...) are refused with an error
// naming the field and what is allowed.
func ParseConfig(data []byte) (*Config, error) {
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, configErrf("not a JSON object: %v", err)
	}
	if raw == nil {
		return nil, configErrf("not a JSON object")
	}
	r := rawConfig{m: raw}
	c := &Config{Raw: raw}
	c.ModelType = r.str("model_type", "")
	if _, ok := raw["model_type"]; !ok && r.err == nil {
		r.err = configErrf("model_type missing (want %q)", ModelType)
	}
	c.Vocab = r.intReq("vocab_size")
	c.Hidden = r.intReq("hidden_size")
	c.Layers = r.intReq("num_hidden_layers")
	c.Heads = r.intReq("num_attention_heads")
	c.KVHeads = r.intOpt("num_key_value_heads", c.Heads)
	headDim := 0
	if c.Heads > 0 {
		headDim = c.Hidden / c.Heads
		if _, ok := raw["head_dim"]; !ok && c.Hidden%c.Heads != 0 && r.err == nil {
			r.err = configErrf("head_dim missing and hidden_size %d is not a multiple of num_attention_heads %d", c.Hidden, c.Heads)
		}
	}
	c.HeadDim = r.intOpt("head_dim", headDim)
	factor := r.floatOpt("partial_rotary_factor", 1.0)
	if r.err == nil && (factor <= 0 || factor > 1) {
		r.err = configErrf("partial_rotary_factor %v not in (0, 1]", factor)
	}
	byFactor := int(float64(c.HeadDim) * factor)
	c.RotaryDim = r.intOpt("rotary_dim", byFactor)
	if _, ok := raw["partial_rotary_factor"]; ok && r.err == nil && c.RotaryDim != byFactor {
		r.err = configErrf("rotary_dim %d disagrees with head_dim·partial_rotary_factor = %d", c.RotaryDim, byFactor)
	}

	c.Intermediate = r.intReq("intermediate_size")
	c.Experts = r.intOpt("num_experts", 0)
	c.MoEIntermediate = r.intOpt("moe_intermediate_size", 0)
	c.TopK = r.intOpt("num_experts_per_tok", 0)
	if c.Experts > 0 {
		// Required as soon as there are experts.
		c.MoEIntermediate = r.intReq("moe_intermediate_size")
		c.TopK = r.intReq("num_experts_per_tok")
	}
	c.SharedExperts = r.intOpt("num_shared_experts", 0)
	c.NGroup = r.intOpt("n_group", 1)
	c.TopKGroup = r.intOpt("topk_group", 1)
	c.FirstKDense = r.intOpt("first_k_dense_replace", 0)
	c.RoutedScale = float32(r.floatOpt("routed_scaling_factor", 1.0))
	c.NormTopK = r.boolOpt("norm_topk_prob", true)
	c.ScoreFunction = r.str("score_function", "sigmoid")
	c.ExpertBias = r.boolOpt("moe_router_enable_expert_bias", true)

	c.Eps = float32(r.floatReq("rms_norm_eps"))
	c.RopeTheta = r.floatReq("rope_theta")
	c.MaxPositions = r.intReq("max_position_embeddings")
	c.TieEmbeddings = r.boolOpt("tie_word_embeddings", false)
	c.UseQKNorm = r.boolOpt("use_qk_norm", true)
	c.QKVBias = r.boolOpt("use_qkv_bias", false)
	c.Bias = r.boolOpt("use_bias", false)
	c.EOSID = r.tokenID("eos_token_id")
	c.BOSID = r.tokenID("bos_token_id")
	c.PadID = r.tokenID("pad_token_id")

	if act := r.str("hidden_act", "silu"); r.err == nil && act != "silu" {
		r.err = configErrf("hidden_act %q not supported (want \"silu\")", act)
	}
	if v, ok := raw["rope_scaling"]; ok && v != nil && r.err == nil {
		r.err = configErrf("rope_scaling %s not supported (want null: only plain RoPE is implemented)", jsonText(v))
	}
	if r.err != nil {
		return nil, r.err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks that the config describes a model this package can run.
func (c *Config) Validate() error {
	if c.ModelType != ModelType {
		return configErrf("model_type %q not supported (want %q)", c.ModelType, ModelType)
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"vocab_size", c.Vocab}, {"hidden_size", c.Hidden}, {"num_hidden_layers", c.Layers},
		{"num_attention_heads", c.Heads}, {"num_key_value_heads", c.KVHeads}, {"head_dim", c.HeadDim},
		{"max_position_embeddings", c.MaxPositions},
	} {
		if f.v <= 0 {
			return configErrf("%s %d must be positive", f.name, f.v)
		}
	}
	if c.Heads%c.KVHeads != 0 {
		return configErrf("num_attention_heads %d is not a multiple of num_key_value_heads %d", c.Heads, c.KVHeads)
	}
	if c.RotaryDim <= 0 || c.RotaryDim%2 != 0 || c.RotaryDim > c.HeadDim {
		return configErrf("rotary_dim %d not supported (want an even number in [2, head_dim %d])", c.RotaryDim, c.HeadDim)
	}
	if c.FirstKDense < 0 || c.FirstKDense > c.Layers {
		return configErrf("first_k_dense_replace %d not in [0, num_hidden_layers %d]", c.FirstKDense, c.Layers)
	}
	if c.Experts < 0 {
		return configErrf("num_experts %d must not be negative", c.Experts)
	}
	if (c.FirstKDense > 0 || c.Experts == 0) && c.Intermediate <= 0 {
		return configErrf("intermediate_size %d must be positive (the model has dense layers)", c.Intermediate)
	}
	if c.ScoreFunction != "sigmoid" {
		return configErrf("score_function %q not supported (want \"sigmoid\")", c.ScoreFunction)
	}
	if c.Experts > 0 {
		switch {
		case c.MoEIntermediate <= 0:
			return configErrf("moe_intermediate_size %d must be positive when num_experts %d > 0", c.MoEIntermediate, c.Experts)
		case c.TopK < 1 || c.TopK > c.Experts:
			return configErrf("num_experts_per_tok %d not in [1, num_experts %d]", c.TopK, c.Experts)
		case c.NGroup < 1:
			return configErrf("n_group %d must be positive", c.NGroup)
		case c.Experts%c.NGroup != 0:
			return configErrf("num_experts %d is not a multiple of n_group %d", c.Experts, c.NGroup)
		case c.TopKGroup < 1 || c.TopKGroup > c.NGroup:
			return configErrf("topk_group %d not in [1, n_group %d]", c.TopKGroup, c.NGroup)
		case c.TopK > c.TopKGroup*(c.Experts/c.NGroup):
			return configErrf("num_experts_per_tok %d exceeds the %d experts of topk_group %d groups", c.TopK, c.TopKGroup*(c.Experts/c.NGroup), c.TopKGroup)
		case c.SharedExperts < 0:
			return configErrf("num_shared_experts %d must not be negative", c.SharedExperts)
		case !(c.RoutedScale > 0) || math.IsInf(float64(c.RoutedScale), 0):
			return configErrf("routed_scaling_factor %v must be positive and finite", c.RoutedScale)
		}
	}
	if !(c.Eps > 0) || math.IsInf(float64(c.Eps), 0) {
		return configErrf("rms_norm_eps %v must be positive and finite", c.Eps)
	}
	if !(c.RopeTheta > 0) || math.IsInf(c.RopeTheta, 0) {
		return configErrf("rope_theta %v must be positive and finite", c.RopeTheta)
	}
	if c.TieEmbeddings {
		return configErrf("tie_word_embeddings true not supported (want false: lm_head.weight is its own tensor)")
	}
	if c.QKVBias {
		return configErrf("use_qkv_bias true not supported (want false)")
	}
	if c.Bias {
		return configErrf("use_bias true not supported (want false)")
	}
	for _, f := range []struct {
		name string
		v    int32
	}{{"eos_token_id", c.EOSID}, {"bos_token_id", c.BOSID}, {"pad_token_id", c.PadID}} {
		if f.v < -1 || int(f.v) >= c.Vocab {
			return configErrf("%s %d not in [0, vocab_size %d)", f.name, f.v, c.Vocab)
		}
	}
	return nil
}

// IsMoELayer reports whether layer i routes to experts (i >= first_k_dense_replace); the
// others run the dense FFN.
func (c *Config) IsMoELayer(i int) bool {
	return c.Experts > 0 && i >= c.FirstKDense && i < c.Layers
}

// MoELayers lists the MoE layers in order.
func (c *Config) MoELayers() []int {
	var ls []int
	for i := 0; i < c.Layers; i++ {
		if c.IsMoELayer(i) {
			ls = append(ls, i)
		}
	}
	return ls
}

// MiniConfig is the LLaDA2.x-mini shape (16B total, 1.4B active), for benchmarks with random
// weights. Token ids are those of the real tokenizer.
func MiniConfig() *Config {
	c := realShape()
	c.Hidden, c.Layers, c.Heads, c.KVHeads, c.HeadDim, c.RotaryDim = 2048, 20, 16, 4, 128, 64
	c.Intermediate, c.MoEIntermediate = 5120, 512
	c.Raw = c.hfFields()
	return c
}

// FlashConfig is the LLaDA2.x-flash shape (100B total, 6.1B active), for benchmarks with random
// weights.
func FlashConfig() *Config {
	c := realShape()
	c.Hidden, c.Layers, c.Heads, c.KVHeads, c.HeadDim, c.RotaryDim = 4096, 32, 32, 4, 128, 64
	c.Intermediate, c.MoEIntermediate = 9216, 1024
	c.Raw = c.hfFields()
	return c
}

// realShape holds what mini and flash share.
func realShape() *Config {
	return &Config{
		ModelType: ModelType, Vocab: 157184,
		Experts: 256, TopK: 8, SharedExperts: 1, NGroup: 8, TopKGroup: 4, FirstKDense: 1,
		RoutedScale: 2.5, NormTopK: true, ScoreFunction: "sigmoid", ExpertBias: true,
		Eps: 1e-6, RopeTheta: 600000, MaxPositions: 32768, UseQKNorm: true,
		EOSID: 156892, BOSID: 156891, PadID: 156892,
	}
}

// hfFields is c in config.json form: ParseConfig of its JSON gives c back.
func (c *Config) hfFields() map[string]any {
	m := map[string]any{
		"model_type": c.ModelType, "vocab_size": c.Vocab, "hidden_size": c.Hidden,
		"num_hidden_layers": c.Layers, "num_attention_heads": c.Heads, "num_key_value_heads": c.KVHeads,
		"head_dim": c.HeadDim, "rotary_dim": c.RotaryDim, "intermediate_size": c.Intermediate,
		"moe_intermediate_size": c.MoEIntermediate, "num_experts": c.Experts, "num_experts_per_tok": c.TopK,
		"num_shared_experts": c.SharedExperts, "n_group": c.NGroup, "topk_group": c.TopKGroup,
		"first_k_dense_replace": c.FirstKDense, "routed_scaling_factor": float64(c.RoutedScale),
		"norm_topk_prob": c.NormTopK, "score_function": c.ScoreFunction, "moe_router_enable_expert_bias": c.ExpertBias,
		"rms_norm_eps": float64(c.Eps), "rope_theta": c.RopeTheta, "max_position_embeddings": c.MaxPositions,
		"tie_word_embeddings": c.TieEmbeddings, "use_qk_norm": c.UseQKNorm, "use_qkv_bias": c.QKVBias,
		"use_bias": c.Bias, "hidden_act": "silu", "rope_scaling": nil,
	}
	for k, v := range map[string]int32{"eos_token_id": c.EOSID, "bos_token_id": c.BOSID, "pad_token_id": c.PadID} {
		if v >= 0 {
			m[k] = int(v)
		}
	}
	// Normalise to what encoding/json yields, so Raw looks the same however the config was made.
	b, err := json.Marshal(m)
	if err != nil {
		return m
	}
	var out map[string]any
	if json.Unmarshal(b, &out) != nil {
		return m
	}
	return out
}

// ParamCounts counts the model's parameters (elements, not bytes).
type ParamCounts struct {
	Total          int64 // every weight, without the router expert_bias vectors
	Attention      int64 // everything but the routed experts: embeddings, attention, norms, router gates, shared experts, dense FFNs, final norm, LM head
	RoutedExperts  int64 // the routed experts of every MoE layer
	PerExpert      int64 // one routed expert of one layer: 3·Hidden·MoEIntermediate
	ActivePerToken int64 // Total − RoutedExperts + MoE layers·TopK·PerExpert
	Embedding      int64 // model.word_embeddings.weight
	LMHead         int64 // lm_head.weight
	StoredValues   int64 // Total plus the expert_bias vectors: every element in the checkpoint
}

// Params counts the parameters the config implies.
func (c *Config) Params() ParamCounts {
	h := int64(c.Hidden)
	moe := int64(len(c.MoELayers()))
	dense := int64(c.Layers) - moe
	var p ParamCounts
	p.Embedding = int64(c.Vocab) * h
	p.LMHead = int64(c.Vocab) * h
	p.PerExpert = 3 * h * int64(c.MoEIntermediate)
	p.RoutedExperts = moe * int64(c.Experts) * p.PerExpert

	attn := 2*h + // input and post-attention RMSNorm
		h*int64((c.Heads+2*c.KVHeads)*c.HeadDim) + // query_key_value
		int64(c.Heads*c.HeadDim)*h // dense (output projection)
	if c.UseQKNorm {
		attn += 2 * int64(c.HeadDim)
	}
	// Per MoE layer: the router gate and the shared experts.
	perMoE := int64(c.Experts)*h + int64(c.SharedExperts)*p.PerExpert
	finalNorm := h
	p.Attention = p.Embedding + p.LMHead + finalNorm +
		int64(c.Layers)*attn + dense*3*h*int64(c.Intermediate) + moe*perMoE
	p.Total = p.Attention + p.RoutedExperts
	p.ActivePerToken = p.Total - p.RoutedExperts + moe*int64(c.TopK)*p.PerExpert
	p.StoredValues = p.Total
	if c.ExpertBias {
		p.StoredValues += moe * int64(c.Experts)
	}
	return p
}

// rawConfig reads typed fields out of the parsed JSON, keeping the first error.
type rawConfig struct {
	m   map[string]any
	err error
}

func (r *rawConfig) intReq(key string) int {
	if _, ok := r.m[key]; !ok {
		if r.err == nil {
			r.err = configErrf("%s missing (required)", key)
		}
		return 0
	}
	return r.intOpt(key, 0)
}

func (r *rawConfig) intOpt(key string, def int) int {
	v, ok := r.m[key]
	if !ok || r.err != nil {
		return def
	}
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) || math.Abs(f) > 1<<31 {
		r.err = configErrf("%s %s is not an integer (want an integer below 2^31)", key, jsonText(v))
		return def
	}
	return int(f)
}

func (r *rawConfig) floatReq(key string) float64 {
	if _, ok := r.m[key]; !ok {
		if r.err == nil {
			r.err = configErrf("%s missing (required)", key)
		}
		return 0
	}
	return r.floatOpt(key, 0)
}

func (r *rawConfig) floatOpt(key string, def float64) float64 {
	v, ok := r.m[key]
	if !ok || r.err != nil {
		return def
	}
	f, ok := v.(float64)
	if !ok {
		r.err = configErrf("%s %s is not a number", key, jsonText(v))
		return def
	}
	return f
}

func (r *rawConfig) boolOpt(key string, def bool) bool {
	v, ok := r.m[key]
	if !ok || r.err != nil {
		return def
	}
	b, ok := v.(bool)
	if !ok {
		r.err = configErrf("%s %s is not a boolean", key, jsonText(v))
		return def
	}
	return b
}

func (r *rawConfig) str(key, def string) string {
	v, ok := r.m[key]
	if !ok || r.err != nil {
		return def
	}
	s, ok := v.(string)
	if !ok {
		r.err = configErrf("%s %s is not a string", key, jsonText(v))
		return def
	}
	return s
}

// tokenID reads an optional token id: a number, null, or a list whose first entry is used
// (HF allows several EOS ids). -1 when absent.
func (r *rawConfig) tokenID(key string) int32 {
	v, ok := r.m[key]
	if !ok || v == nil || r.err != nil {
		return -1
	}
	if l, isList := v.([]any); isList {
		if len(l) == 0 {
			return -1
		}
		v = l[0]
	}
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) || f < 0 || f >= 1<<31 {
		r.err = configErrf("%s %s is not a token id (want a non-negative integer)", key, jsonText(r.m[key]))
		return -1
	}
	return int32(f)
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	s := string(b)
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return strings.TrimSpace(s)
}
