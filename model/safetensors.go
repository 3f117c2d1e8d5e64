package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/dlmesh/dlmesh/kernels"
)

// Names of the checkpoint files in a model directory.
const (
	IndexFile      = "model.safetensors.index.json"
	SingleFile     = "model.safetensors"
	MaxHeaderBytes = 100 << 20 // a safetensors JSON header larger than this is refused
)

// TensorInfo describes one tensor of a checkpoint.
type TensorInfo struct {
	Name  string
	DType kernels.DType // 0 in ParseHeader's result for a dtype this package does not load
	Shape []int
	Data  []byte // little-endian elements; aliases the read-only mmap, valid until Checkpoint.Close
	File  string // the shard's file name (no directory)
}

// Checkpoint is a set of memory-mapped safetensors shards: one model.safetensors, or the shards
// that model.safetensors.index.json names. Every shard is mapped and its header validated by
// OpenCheckpoint; Tensor and Expect are safe for concurrent use until Close.
type Checkpoint struct {
	dir    string
	where  map[string]*shard // tensor name → shard, as the index says (or the single file's header)
	shards []*shard

	mu     sync.RWMutex
	closed bool
}

// shard is one mapped safetensors file.
type shard struct {
	file    string
	data    []byte // the whole file, mapped read-only
	body    []byte // data after the header
	tensors map[string]stEntry
}

// stEntry is one header entry; dt is 0 for dtypes this package does not load.
type stEntry struct {
	dtype      string
	dt         kernels.DType
	shape      []int
	begin, end int64
}

// checkpointError is a checkpoint problem; it matches kind (ErrBadCheckpoint or
// ErrMissingTensor) and whatever its message wraps.
type checkpointError struct {
	kind error
	err  error
}

func (e *checkpointError) Error() string   { return e.err.Error() }
func (e *checkpointError) Unwrap() []error { return []error{e.kind, e.err} }

func badCkpt(format string, a ...any) error {
	return &checkpointError{kind: ErrBadCheckpoint, err: fmt.Errorf("model: "+format, a...)}
}

// OpenCheckpoint maps the checkpoint in dir: the shards of model.safetensors.index.json when it
// exists, else model.safetensors. Every shard header is validated here, so a missing or
// truncated shard fails now, not at the first Tensor.
func OpenCheckpoint(dir string) (*Checkpoint, error) {
	c := &Checkpoint{dir: dir, where: map[string]*shard{}}
	idx, err := os.ReadFile(filepath.Join(dir, IndexFile))
	switch {
	case err == nil:
		weightMap, err := parseIndex(idx)
		if err != nil {
			return nil, err
		}
		byFile := map[string]*shard{}
		for _, name := range slices.Sorted(maps.Keys(weightMap)) {
			file := weightMap[name]
			s := byFile[file]
			if s == nil {
				if s, err = openShard(dir, file); err != nil {
					c.Close()
					return nil, err
				}
				byFile[file] = s
				c.shards = append(c.shards, s)
			}
			c.where[name] = s
		}
	case errors.Is(err, os.ErrNotExist):
		s, err := openShard(dir, SingleFile)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, badCkpt("no %s or %s in %s: %w", IndexFile, SingleFile, dir, err)
			}
			return nil, err
		}
		c.shards = append(c.shards, s)
		for name := range s.tensors {
			c.where[name] = s
		}
	default:
		return nil, fmt.Errorf("model: open checkpoint: %w", err)
	}
	return c, nil
}

// parseIndex reads the weight_map of a model.safetensors.index.json.
func parseIndex(b []byte) (map[string]string, error) {
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, badCkpt("%s: %w", IndexFile, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, badCkpt("%s: weight_map missing or empty", IndexFile)
	}
	for name, file := range idx.WeightMap {
		if file == "" || file != filepath.Base(file) || file == "." || file == ".." || strings.ContainsAny(file, `/\`) {
			return nil, badCkpt("%s: tensor %q maps to %q, want a file name in the model directory", IndexFile, name, file)
		}
	}
	return idx.WeightMap, nil
}

// openShard maps dir/file read-only and validates its header against its size.
func openShard(dir, file string) (*shard, error) {
	f, err := os.Open(filepath.Join(dir, file))
	if err != nil {
		return nil, &checkpointError{kind: ErrBadCheckpoint, err: fmt.Errorf("model: shard %s: %w", file, err)}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, badCkpt("shard %s: %w", file, err)
	}
	size := st.Size()
	if size < 8 {
		return nil, badCkpt("shard %s: truncated: %d bytes, shorter than the 8-byte header length", file, size)
	}
	if size > math.MaxInt {
		return nil, badCkpt("shard %s: %d bytes too large to map", file, size)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, badCkpt("shard %s: mmap: %w", file, err)
	}
	s := &shard{file: file, data: data}
	if s.tensors, s.body, err = parseFile(data); err != nil {
		_ = syscall.Munmap(data)
		return nil, badCkpt("shard %s: %w", file, err)
	}
	return s, nil
}

// parseFile splits a whole safetensors file into its validated header and its data buffer.
func parseFile(data []byte) (map[string]stEntry, []byte, error) {
	if len(data) < 8 {
		return nil, nil, fmt.Errorf("truncated: %d bytes, shorter than the 8-byte header length", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n >= MaxHeaderBytes {
		return nil, nil, fmt.Errorf("header length %d not below the %d-byte limit", n, MaxHeaderBytes)
	}
	if n > uint64(len(data)-8) {
		return nil, nil, fmt.Errorf("truncated: header length %d but only %d bytes follow it", n, len(data)-8)
	}
	entries, _, err := parseHeader(data[8 : 8+n])
	if err != nil {
		return nil, nil, err
	}
	body := data[8+n:]
	var last int64
	for _, e := range entries {
		last = max(last, e.end)
	}
	if last > int64(len(body)) {
		return nil, nil, fmt.Errorf("truncated: tensors end at data offset %d but the data holds %d bytes", last, len(body))
	}
	return entries, body, nil
}

// ParseHeader parses and validates the JSON header of a safetensors file (the bytes after the
// 8-byte length). The returned tensors have no Data; a dtype other than BF16, F16 and F32 gives
// DType 0. Offsets are checked for order and size, not against a file.
func ParseHeader(b []byte) (map[string]TensorInfo, map[string]string, error) {
	entries, meta, err := parseHeader(b)
	if err != nil {
		return nil, nil, &checkpointError{kind: ErrBadCheckpoint, err: fmt.Errorf("model: safetensors header: %w", err)}
	}
	out := make(map[string]TensorInfo, len(entries))
	for name, e := range entries {
		out[name] = TensorInfo{Name: name, DType: e.dt, Shape: e.shape}
	}
	return out, meta, nil
}

// dtypeBits is the element size of every safetensors dtype, in bits.
var dtypeBits = map[string]uint64{
	"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
	"I16": 16, "U16": 16, "F16": 16, "BF16": 16,
	"I32": 32, "U32": 32, "F32": 32,
	"I64": 64, "U64": 64, "F64": 64,
	"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

var loadable = map[string]kernels.DType{"BF16": kernels.BF16, "F16": kernels.F16, "F32": kernels.F32}

// headerEntry is one tensor of the JSON header as written; numbers stay text so that their
// range is checked here, with a clear message, rather than by encoding/json.
type headerEntry struct {
	DType       *string        `json:"dtype"`
	Shape       *[]json.Number `json:"shape"`
	DataOffsets *[]json.Number `json:"data_offsets"`
}

func parseHeader(b []byte) (map[string]stEntry, map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, errors.New("not a JSON object")
	}
	entries := map[string]stEntry{}
	var meta map[string]string
	seenMeta := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("invalid JSON: %w", err)
		}
		name, _ := tok.(string)
		if _, dup := entries[name]; dup || (name == "__metadata__" && seenMeta) {
			return nil, nil, fmt.Errorf("key %q appears twice", name)
		}
		if name == "__metadata__" {
			seenMeta = true
			if err := dec.Decode(&meta); err != nil {
				return nil, nil, fmt.Errorf("__metadata__: want an object of strings: %w", err)
			}
			continue
		}
		var h headerEntry
		if err := dec.Decode(&h); err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		e, err := h.entry()
		if err != nil {
			return nil, nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		entries[name] = e
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, nil, errors.New("invalid JSON: unterminated object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, errors.New("invalid JSON: data after the header object")
	}
	if err := checkLayout(entries); err != nil {
		return nil, nil, err
	}
	return entries, meta, nil
}

func (h *headerEntry) entry() (stEntry, error) {
	var e stEntry
	if h.DType == nil || h.Shape == nil || h.DataOffsets == nil {
		return e, errors.New("want dtype, shape and data_offsets")
	}
	e.dtype = *h.DType
	e.dt = loadable[e.dtype]
	numel := uint64(1)
	e.shape = make([]int, len(*h.Shape))
	for i, d := range *h.Shape {
		v, err := d.Int64()
		if err != nil || v < 0 {
			return e, fmt.Errorf("shape %v: dimension %q is not a non-negative integer", *h.Shape, d)
		}
		e.shape[i] = int(v)
		hi, lo := bits.Mul64(numel, uint64(v))
		if hi != 0 || lo > math.MaxInt64/64 {
			return e, fmt.Errorf("shape %v: element count overflows", *h.Shape)
		}
		numel = lo
	}
	if len(*h.DataOffsets) != 2 {
		return e, fmt.Errorf("data_offsets %v: want [begin, end]", *h.DataOffsets)
	}
	var off [2]int64
	for i, d := range *h.DataOffsets {
		v, err := d.Int64()
		if err != nil || v < 0 {
			return e, fmt.Errorf("data_offsets %v: %q is not a non-negative integer", *h.DataOffsets, d)
		}
		off[i] = v
	}
	e.begin, e.end = off[0], off[1]
	if e.begin > e.end {
		return e, fmt.Errorf("data_offsets [%d, %d]: begin after end", e.begin, e.end)
	}
	if b, ok := dtypeBits[e.dtype]; ok {
		if numel*b%8 != 0 {
			return e, fmt.Errorf("%d elements of %s are not a whole number of bytes", numel, e.dtype)
		}
		if want := numel * b / 8; uint64(e.end-e.begin) != want {
			return e, fmt.Errorf("data_offsets [%d, %d] hold %d bytes, want %d for %s%v", e.begin, e.end, e.end-e.begin, want, e.dtype, e.shape)
		}
	}
	return e, nil
}

// checkLayout refuses overlapping tensors and holes: sorted by offset, each tensor begins where
// the previous one ends, and the first at 0 (as the safetensors format requires).
func checkLayout(entries map[string]stEntry) error {
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		ea, eb := entries[a], entries[b]
		if ea.begin != eb.begin {
			return cmpInt64(ea.begin, eb.begin)
		}
		if ea.end != eb.end {
			return cmpInt64(ea.end, eb.end)
		}
		return strings.Compare(a, b)
	})
	var at int64
	for _, n := range names {
		e := entries[n]
		if e.begin != at {
			if e.begin < at {
				return fmt.Errorf("tensor %q at data_offsets [%d, %d] overlaps the previous tensor ending at %d", n, e.begin, e.end, at)
			}
			return fmt.Errorf("tensor %q at data_offsets [%d, %d] leaves a hole after offset %d", n, e.begin, e.end, at)
		}
		at = e.end
	}
	return nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Tensor returns the named tensor. A name the checkpoint lacks gives an error wrapping
// ErrMissingTensor; a dtype other than BF16, F16 and F32 gives one wrapping ErrBadCheckpoint.
func (c *Checkpoint) Tensor(name string) (TensorInfo, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return TensorInfo{}, badCkpt("tensor %q: checkpoint closed", name)
	}
	s, ok := c.where[name]
	if !ok {
		return TensorInfo{}, &checkpointError{kind: ErrMissingTensor, err: fmt.Errorf("model: tensor %q not in the checkpoint at %s", name, c.dir)}
	}
	e, ok := s.tensors[name]
	if !ok {
		return TensorInfo{}, &checkpointError{kind: ErrMissingTensor, err: fmt.Errorf("model: tensor %q not in %s (%s maps it there)", name, s.file, IndexFile)}
	}
	if e.dt == 0 {
		return TensorInfo{}, badCkpt("tensor %q in %s: dtype %s not supported (want BF16, F16 or F32)", name, s.file, e.dtype)
	}
	return TensorInfo{
		Name: name, DType: e.dt, Shape: slices.Clone(e.shape),
		Data: s.body[e.begin:e.end:e.end], File: s.file,
	}, nil
}

// Expect returns the named tensor after checking its dtype is one of dt (any loadable dtype when
// dt is empty) and its shape is exactly shape.
func (c *Checkpoint) Expect(name string, dt []kernels.DType, shape ...int) (TensorInfo, error) {
	t, err := c.Tensor(name)
	if err != nil {
		return t, err
	}
	if len(dt) > 0 && !slices.Contains(dt, t.DType) {
		want := make([]string, len(dt))
		for i, d := range dt {
			want[i] = d.String()
		}
		return TensorInfo{}, badCkpt("tensor %q has dtype %v, want %s", name, t.DType, strings.Join(want, " or "))
	}
	if !slices.Equal(t.Shape, shape) {
		return TensorInfo{}, badCkpt("tensor %q has shape %v, want %v", name, t.Shape, shape)
	}
	return t, nil
}

// Names lists every tensor of the checkpoint, sorted.
func (c *Checkpoint) Names() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	names := make([]string, 0, len(c.where))
	for n := range c.where {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Close unmaps every shard. The Data of every TensorInfo handed out becomes invalid: touching
// it after Close faults.
func (c *Checkpoint) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, s := range c.shards {
		if err := syscall.Munmap(s.data); err != nil {
			errs = append(errs, fmt.Errorf("model: unmap %s: %w", s.file, err))
		}
		s.data, s.body = nil, nil
	}
	c.shards = nil
	return errors.Join(errs...)
}
