package model

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"github.com/dlmesh/dlmesh/kernels"
)

// CheckpointTensor is one tensor of a llada2_moe checkpoint as this package names and shapes it.
type CheckpointTensor struct {
	Name  string
	DType kernels.DType // BF16, or F32 for the router's expert_bias
	Shape []int
	// Init is how WriteRandomCheckpoint fills it: "uniform" in [-Scale, Scale), "ones", "zeros".
	Init  string
	Scale float32
}

// Bytes is the tensor's size in bytes.
func (t CheckpointTensor) Bytes() int64 {
	n := int64(t.DType.Size())
	for _, s := range t.Shape {
		n *= int64(s)
	}
	return n
}

// CheckpointTensors lists every tensor a checkpoint of shape c holds, in the order of the HF
// layout (embedding, layer by layer, final norm, LM head), with the fill NewRandom uses.
func (c *Config) CheckpointTensors() []CheckpointTensor {
	var ts []CheckpointTensor
	add := func(name string, init string, scale float32, shape ...int) {
		dt := kernels.BF16
		if init == "zeros" {
			dt = kernels.F32
		}
		ts = append(ts, CheckpointTensor{Name: name, DType: dt, Shape: shape, Init: init, Scale: scale})
	}
	ffn := func(p string, inter int) {
		add(p+"gate_proj.weight", "uniform", scaleFor(c.Hidden), inter, c.Hidden)
		add(p+"up_proj.weight", "uniform", scaleFor(c.Hidden), inter, c.Hidden)
		add(p+"down_proj.weight", "uniform", scaleFor(inter), c.Hidden, inter)
	}
	add("model.word_embeddings.weight", "uniform", 0.5, c.Vocab, c.Hidden)
	for i := range c.Layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		add(p+"input_layernorm.weight", "ones", 0, c.Hidden)
		add(p+"attention.query_key_value.weight", "uniform", scaleFor(c.Hidden), (c.Heads+2*c.KVHeads)*c.HeadDim, c.Hidden)
		if c.UseQKNorm {
			add(p+"attention.query_layernorm.weight", "ones", 0, c.HeadDim)
			add(p+"attention.key_layernorm.weight", "ones", 0, c.HeadDim)
		}
		add(p+"attention.dense.weight", "uniform", scaleFor(c.Heads*c.HeadDim), c.Hidden, c.Heads*c.HeadDim)
		add(p+"post_attention_layernorm.weight", "ones", 0, c.Hidden)
		if !c.IsMoELayer(i) {
			ffn(p+"mlp.", c.Intermediate)
			continue
		}
		add(p+"mlp.gate.weight", "uniform", scaleFor(c.Hidden), c.Experts, c.Hidden)
		if c.ExpertBias {
			add(p+"mlp.gate.expert_bias", "zeros", 0, c.Experts)
		}
		for e := range c.Experts {
			ffn(fmt.Sprintf("%smlp.experts.%d.", p, e), c.MoEIntermediate)
		}
		if c.SharedExperts > 0 {
			ffn(p+"mlp.shared_experts.", c.MoEIntermediate*c.SharedExperts)
		}
	}
	add("model.norm.weight", "ones", 0, c.Hidden)
	add("lm_head.weight", "uniform", scaleFor(c.Hidden), c.Vocab, c.Hidden)
	return ts
}

// DefaultShardBytes is the shard size WriteRandomCheckpoint aims at (HF's default 5 GB).
const DefaultShardBytes = 5 << 30

// WriteRandomCheckpoint writes a checkpoint of shape c with random weights into dir (created if
// missing) in the HF layout: configJSON as config.json (it must parse to c's shape), the
// tensors of CheckpointTensors in shards model-0000i-of-0000n.safetensors of at most
// shardBytes each (a larger tensor gets a shard of its own), and model.safetensors.index.json.
// The weights depend only on seed. progress, when set, is told the bytes written so far.
func WriteRandomCheckpoint(ctx context.Context, dir string, c *Config, configJSON []byte, seed uint64, shardBytes int64, progress func(done, total int64)) error {
	if shardBytes <= 0 {
		return fmt.Errorf("model: random checkpoint: shard size %d bytes: want > 0", shardBytes)
	}
	pc, err := ParseConfig(configJSON)
	if err != nil {
		return fmt.Errorf("model: random checkpoint: %w", err)
	}
	if pc.Vocab != c.Vocab || pc.Hidden != c.Hidden || pc.Layers != c.Layers || pc.Experts != c.Experts || pc.MoEIntermediate != c.MoEIntermediate {
		return fmt.Errorf("model: random checkpoint: config.json (vocab %d, hidden %d, layers %d, experts %d) is not the shape written", pc.Vocab, pc.Hidden, pc.Layers, pc.Experts)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("model: random checkpoint: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), configJSON, 0o644); err != nil {
		return fmt.Errorf("model: random checkpoint: %w", err)
	}
	ts := c.CheckpointTensors()
	var shards [][]int // tensor indices per shard
	var total, cur int64
	for i, t := range ts {
		total += t.Bytes()
		if len(shards) == 0 || cur > 0 && cur+t.Bytes() > shardBytes {
			shards = append(shards, nil)
			cur = 0
		}
		shards[len(shards)-1] = append(shards[len(shards)-1], i)
		cur += t.Bytes()
	}
	weightMap := map[string]string{}
	var done int64
	for si, idx := range shards {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", si+1, len(shards))
		if err := writeShard(ctx, filepath.Join(dir, name), ts, idx, seed, func(n int64) {
			done += n
			if progress != nil {
				progress(done, total)
			}
		}); err != nil {
			return fmt.Errorf("model: random checkpoint: %s: %w", name, err)
		}
		for _, i := range idx {
			weightMap[ts[i].Name] = name
		}
	}
	index, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), append(index, '\n'), 0o644); err != nil {
		return fmt.Errorf("model: random checkpoint: %w", err)
	}
	return nil
}

// writeShard writes the tensors ts[idx] as one safetensors file, data in idx order.
func writeShard(ctx context.Context, path string, ts []CheckpointTensor, idx []int, seed uint64, wrote func(int64)) error {
	hdr := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	var off int64
	for _, i := range idx {
		t := ts[i]
		hdr[t.Name] = map[string]any{"dtype": t.DType.String(), "shape": t.Shape, "data_offsets": []int64{off, off + t.Bytes()}}
		off += t.Bytes()
	}
	hj, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	for len(hj)%8 != 0 {
		hj = append(hj, ' ')
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 4<<20)
	var n8 [8]byte
	binary.LittleEndian.PutUint64(n8[:], uint64(len(hj)))
	w.Write(n8[:])
	w.Write(hj)
	for _, i := range idx {
		if err := ctx.Err(); err != nil {
			f.Close()
			return err
		}
		if err := writeTensor(w, ts[i], seed+uint64(i)*0x9e3779b97f4a7c15); err != nil {
			f.Close()
			return err
		}
		wrote(ts[i].Bytes())
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// randChunk is the elements one worker generates at a time.
const randChunk = 1 << 22

// writeTensor writes t's data: chunks of randChunk elements generated in parallel, each from its
// own splitmix64 stream of (seed, chunk), written in order.
func writeTensor(w *bufio.Writer, t CheckpointTensor, seed uint64) error {
	n := int(t.Bytes()) / t.DType.Size()
	switch t.Init {
	case "zeros", "ones":
		var one [4]byte
		if t.Init == "ones" {
			binary.LittleEndian.PutUint16(one[:], kernels.F32ToBF16(1))
		}
		sz := t.DType.Size()
		for range n {
			if _, err := w.Write(one[:sz]); err != nil {
				return err
			}
		}
		return nil
	case "uniform":
	default:
		return fmt.Errorf("tensor %s: unknown init %q", t.Name, t.Init)
	}
	tab := uniformTable(t.Scale)
	chunks := (n + randChunk - 1) / randChunk
	workers := min(runtime.GOMAXPROCS(0), chunks)
	bufs := make([][]byte, workers)
	for c0 := 0; c0 < chunks; c0 += workers {
		var wg sync.WaitGroup
		for j := 0; j < workers && c0+j < chunks; j++ {
			c := c0 + j
			lo, hi := c*randChunk, min((c+1)*randChunk, n)
			if cap(bufs[j]) < 2*(hi-lo) {
				bufs[j] = make([]byte, 2*randChunk)
			}
			bufs[j] = bufs[j][:2*(hi-lo)]
			wg.Add(1)
			go func(b []byte) {
				defer wg.Done()
				fillUniformBF16(b, seed+uint64(c)*0xbf58476d1ce4e5b9, tab)
			}(bufs[j])
		}
		wg.Wait()
		for j := 0; j < workers && c0+j < chunks; j++ {
			if _, err := w.Write(bufs[j]); err != nil {
				return err
			}
		}
	}
	return nil
}

// uniformTable maps 16 random bits r to the bf16 of (2u−1)·scale, u = r/65536.
func uniformTable(scale float32) *[1 << 16]uint16 {
	var tab [1 << 16]uint16
	for r := range tab {
		u := float32(r) * (1.0 / 65536)
		tab[r] = kernels.F32ToBF16((2*u - 1) * scale)
	}
	return &tab
}

// fillUniformBF16 fills b (little-endian bf16 values) from tab, indexed by 16 bits of a
// splitmix64 stream of seed, four values per draw.
func fillUniformBF16(b []byte, seed uint64, tab *[1 << 16]uint16) {
	z := seed
	for i := 0; i < len(b); i += 8 {
		z += 0x9e3779b97f4a7c15
		x := z
		x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
		x = (x ^ (x >> 27)) * 0x94d049bb133111eb
		x ^= x >> 31
		if i+8 <= len(b) {
			v := uint64(tab[uint16(x)]) | uint64(tab[uint16(x>>16)])<<16 | uint64(tab[uint16(x>>32)])<<32 | uint64(tab[uint16(x>>48)])<<48
			binary.LittleEndian.PutUint64(b[i:], v)
			continue
		}
		for k := 0; i+2*k < len(b); k++ {
			binary.LittleEndian.PutUint16(b[i+2*k:], tab[uint16(x>>(16*k))])
		}
	}
}

// sortedNames is the tensor names of ts, sorted (tests compare them with a checkpoint's).
func sortedNames(ts []CheckpointTensor) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	sort.Strings(out)
	return out
}
