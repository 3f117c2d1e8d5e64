package model

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dlmesh/dlmesh/kernels"
)

// stTensor is one tensor for writeSafetensors; data nil means numel·size bytes of a pattern.
type stTensor struct {
	name  string
	dtype string
	shape []int
	data  []byte
}

// safetensorsBytes builds a safetensors file the way the format writes one: the header lists
// the tensors in the order given, with contiguous data offsets, padded with spaces to 8 bytes.
func safetensorsBytes(tb testing.TB, ts []stTensor, meta map[string]string) []byte {
	tb.Helper()
	hdr := map[string]any{}
	if meta != nil {
		hdr["__metadata__"] = meta
	}
	var body []byte
	for _, t := range ts {
		d := t.data
		if d == nil {
			n := dtypeBits[t.dtype] / 8
			for _, s := range t.shape {
				n *= uint64(s)
			}
			d = make([]byte, n)
			for i := range d {
				d[i] = byte(len(body) + i)
			}
		}
		hdr[t.name] = map[string]any{"dtype": t.dtype, "shape": t.shape, "data_offsets": []int{len(body), len(body) + len(d)}}
		body = append(body, d...)
	}
	h, err := json.Marshal(hdr)
	if err != nil {
		tb.Fatal(err)
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(out, h...)
	return append(out, body...)
}

func writeFile(tb testing.TB, path string, b []byte) {
	tb.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		tb.Fatal(err)
	}
}

func writeIndex(tb testing.TB, dir string, weightMap map[string]string) {
	tb.Helper()
	writeFile(tb, filepath.Join(dir, IndexFile), mustJSON(tb, map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap}))
}

func openTB(tb testing.TB, dir string) *Checkpoint {
	tb.Helper()
	c, err := OpenCheckpoint(dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Error(err)
		}
	})
	return c
}

var smallTensors = []stTensor{
	{name: "a.weight", dtype: "BF16", shape: []int{3, 4}, data: []byte("0123456789abcdefghijklmn")},
	{name: "b.bias", dtype: "F32", shape: []int{5}},
	{name: "c.half", dtype: "F16", shape: []int{2, 0, 7}},
	{name: "d.scalar", dtype: "F32", shape: []int{}},
	{name: "e.ids", dtype: "I64", shape: []int{3}},
}

func TestCheckpointSingleFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, SingleFile), safetensorsBytes(t, smallTensors, map[string]string{"format": "pt"}))
	c := openTB(t, dir)
	if got, want := c.Names(), []string{"a.weight", "b.bias", "c.half", "d.scalar", "e.ids"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	a, err := c.Expect("a.weight", []kernels.DType{kernels.BF16}, 3, 4)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Data) != "0123456789abcdefghijklmn" || a.File != SingleFile || a.Name != "a.weight" || a.DType != kernels.BF16 {
		t.Errorf("a.weight = %+v", a)
	}
	for _, tc := range []struct {
		name  string
		dt    kernels.DType
		shape []int
		bytes int
	}{{"b.bias", kernels.F32, []int{5}, 20}, {"c.half", kernels.F16, []int{2, 0, 7}, 0}, {"d.scalar", kernels.F32, []int{}, 4}} {
		ti, err := c.Expect(tc.name, nil, tc.shape...)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if ti.DType != tc.dt || len(ti.Data) != tc.bytes {
			t.Errorf("%s: dtype %v with %d bytes, want %v with %d", tc.name, ti.DType, len(ti.Data), tc.dt, tc.bytes)
		}
	}
	// An unsupported dtype is listed, and refused only when asked for.
	if _, err := c.Tensor("e.ids"); !errors.Is(err, ErrBadCheckpoint) || !strings.Contains(err.Error(), `dtype I64 not supported (want BF16, F16 or F32)`) {
		t.Errorf("Tensor(e.ids) = %v, want an unsupported dtype error", err)
	}
	// Shapes handed out are copies.
	a.Shape[0] = 99
	if b, _ := c.Tensor("a.weight"); b.Shape[0] != 3 {
		t.Errorf("changing a returned shape changed the checkpoint's")
	}
}

func TestCheckpointSharded(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "s-1.safetensors"), safetensorsBytes(t, smallTensors[:2], nil))
	writeFile(t, filepath.Join(dir, "s-2.safetensors"), safetensorsBytes(t, smallTensors[2:4], nil))
	// A stray model.safetensors is ignored when the index exists.
	writeFile(t, filepath.Join(dir, SingleFile), []byte("garbage"))
	writeIndex(t, dir, map[string]string{"a.weight": "s-1.safetensors", "b.bias": "s-1.safetensors", "c.half": "s-2.safetensors", "d.scalar": "s-2.safetensors"})
	c := openTB(t, dir)
	if got, want := c.Names(), []string{"a.weight", "b.bias", "c.half", "d.scalar"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	for name, file := range map[string]string{"a.weight": "s-1.safetensors", "d.scalar": "s-2.safetensors"} {
		ti, err := c.Tensor(name)
		if err != nil || ti.File != file {
			t.Errorf("Tensor(%s) = %+v, %v; want it from %s", name, ti, err, file)
		}
	}
	if ti, _ := c.Tensor("a.weight"); string(ti.Data) != "0123456789abcdefghijklmn" {
		t.Errorf("a.weight data %q", ti.Data)
	}
}

func TestCheckpointErrors(t *testing.T) {
	good := safetensorsBytes(t, smallTensors[:2], nil)
	cases := []struct {
		name  string
		files map[string][]byte
		index map[string]string
		want  string
	}{
		{name: "empty dir", want: "no model.safetensors.index.json or model.safetensors"},
		{name: "shorter than the length", files: map[string][]byte{SingleFile: good[:5]}, want: "shard model.safetensors: truncated: 5 bytes"},
		{name: "truncated header", files: map[string][]byte{SingleFile: good[:40]}, want: "truncated: header length"},
		{name: "truncated data", files: map[string][]byte{SingleFile: good[:len(good)-1]}, want: "truncated: tensors end at data offset 44 but the data holds 43 bytes"},
		{name: "huge header length", files: map[string][]byte{SingleFile: append(binary.LittleEndian.AppendUint64(nil, 1<<40), "{}"...)}, want: "not below the 104857600-byte limit"},
		{name: "corrupt header", files: map[string][]byte{SingleFile: corruptHeader(good, 8, '[')}, want: "shard model.safetensors: not a JSON object"},
		{name: "bad offsets", files: map[string][]byte{SingleFile: rawFile(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 8)}, want: "hold 4 bytes, want 8 for F32[2]"},
		{name: "overlap", files: map[string][]byte{SingleFile: rawFile(`{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8)}, want: "overlaps"},
		{name: "invalid index", files: map[string][]byte{IndexFile: []byte("{")}, want: "model.safetensors.index.json: unexpected end of JSON input"},
		{name: "index without weight_map", files: map[string][]byte{IndexFile: []byte("{}")}, want: "weight_map missing or empty"},
		{name: "index escapes dir", index: map[string]string{"a.weight": "../x.safetensors"}, want: `maps to "../x.safetensors", want a file name`},
		{name: "missing shard", files: map[string][]byte{"s-1.safetensors": good}, index: map[string]string{"a.weight": "s-1.safetensors", "b.bias": "s-2.safetensors"}, want: "shard s-2.safetensors: open"},
		{name: "truncated shard", files: map[string][]byte{"s-1.safetensors": good[:len(good)-8]}, index: map[string]string{"a.weight": "s-1.safetensors"}, want: "shard s-1.safetensors: truncated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for f, b := range tc.files {
				writeFile(t, filepath.Join(dir, f), b)
			}
			if tc.index != nil {
				writeIndex(t, dir, tc.index)
			}
			c, err := OpenCheckpoint(dir)
			if err == nil {
				c.Close()
				t.Fatal("OpenCheckpoint accepted it")
			}
			if !errors.Is(err, ErrBadCheckpoint) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nwant ErrBadCheckpoint containing %q", err, tc.want)
			}
		})
	}
}

// corruptHeader returns a copy of b with b[i] = c.
func corruptHeader(b []byte, i int, c byte) []byte {
	b = slices.Clone(b)
	b[i] = c
	return b
}

// rawFile makes a safetensors file of a literal header and n zero data bytes.
func rawFile(header string, n int) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	out = append(out, header...)
	return append(out, make([]byte, n)...)
}

func TestCheckpointTensorErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "s-1.safetensors"), safetensorsBytes(t, smallTensors[:2], nil))
	// The index names a tensor its shard lacks.
	writeIndex(t, dir, map[string]string{"a.weight": "s-1.safetensors", "b.bias": "s-1.safetensors", "ghost.weight": "s-1.safetensors"})
	c := openTB(t, dir)

	cases := []struct {
		name string
		get  func() (TensorInfo, error)
		is   error
		want string
	}{
		{"not in index", func() (TensorInfo, error) { return c.Tensor("nope.weight") }, ErrMissingTensor, `model: tensor "nope.weight" not in the checkpoint at ` + dir},
		{"not in its shard", func() (TensorInfo, error) { return c.Tensor("ghost.weight") }, ErrMissingTensor, `tensor "ghost.weight" not in s-1.safetensors`},
		{"expect missing", func() (TensorInfo, error) { return c.Expect("nope.weight", nil, 1) }, ErrMissingTensor, `"nope.weight"`},
		{"wrong shape", func() (TensorInfo, error) { return c.Expect("a.weight", nil, 4, 3) }, ErrBadCheckpoint, `model: tensor "a.weight" has shape [3 4], want [4 3]`},
		{"wrong rank", func() (TensorInfo, error) { return c.Expect("a.weight", nil, 12) }, ErrBadCheckpoint, `has shape [3 4], want [12]`},
		{"wrong dtype", func() (TensorInfo, error) { return c.Expect("b.bias", []kernels.DType{kernels.BF16, kernels.F16}, 5) }, ErrBadCheckpoint, `model: tensor "b.bias" has dtype F32, want BF16 or F16`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.get()
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\nwant %v containing %q", err, tc.is, tc.want)
			}
		})
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Tensor("a.weight"); !errors.Is(err, ErrBadCheckpoint) || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Tensor after Close = %v", err)
	}
}

func TestParseHeader(t *testing.T) {
	hdr := `{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"q":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[20,24]}}   `
	ts, meta, err := ParseHeader([]byte(hdr))
	if err != nil {
		t.Fatal(err)
	}
	if meta["format"] != "pt" || len(ts) != 3 {
		t.Fatalf("meta %v, tensors %v", meta, ts)
	}
	if w := ts["w"]; w.Name != "w" || w.DType != kernels.BF16 || !slices.Equal(w.Shape, []int{2, 3}) || w.Data != nil {
		t.Errorf("w = %+v", w)
	}
	if q := ts["q"]; q.DType != 0 {
		t.Errorf("an F8 tensor got dtype %v, want 0", q.DType)
	}

	bad := []struct{ name, hdr, want string }{
		{"empty", ``, "not a JSON object"},
		{"array", `[]`, "not a JSON object"},
		{"trailing data", `{} {}`, "data after the header object"},
		{"unterminated", `{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}`, "unterminated"},
		{"duplicate key", `{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, `key "w" appears twice`},
		{"metadata not strings", `{"__metadata__":{"n":1}}`, "__metadata__: want an object of strings"},
		{"entry missing offsets", `{"w":{"dtype":"F32","shape":[1]}}`, "want dtype, shape and data_offsets"},
		{"entry not object", `{"w":3}`, `tensor "w"`},
		{"negative dim", `{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, "not a non-negative integer"},
		{"fractional dim", `{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, "not a non-negative integer"},
		{"overflow", `{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, "element count overflows"},
		{"three offsets", `{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, "want [begin, end]"},
		{"negative offset", `{"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, "not a non-negative integer"},
		{"begin after end", `{"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}`, "begin after end"},
		{"size mismatch", `{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,4]}}`, "hold 4 bytes, want 6 for BF16[3]"},
		{"hole", `{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, "leaves a hole"},
		{"sub-byte remainder", `{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`, "not a whole number of bytes"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseHeader([]byte(tc.hdr))
			if !errors.Is(err, ErrBadCheckpoint) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseHeader(%q) = %v\nwant ErrBadCheckpoint containing %q", tc.hdr, err, tc.want)
			}
		})
	}
}

// TestCheckpointConcurrent reads tensors from many goroutines (run with -race).
func TestCheckpointConcurrent(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, SingleFile), safetensorsBytes(t, smallTensors, nil))
	c := openTB(t, dir)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				name := smallTensors[(g+i)%4].name
				if _, err := c.Tensor(name); err != nil {
					t.Error(err)
					return
				}
				_ = c.Names()
			}
		}()
	}
	wg.Wait()
}

// TestCheckpointTiny reads every tensor of the bundled checkpoint.
func TestCheckpointTiny(t *testing.T) {
	idx, err := os.ReadFile(filepath.Join(tinyModelDir, IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	weightMap, err := parseIndex(idx)
	if err != nil {
		t.Fatal(err)
	}
	c := openTB(t, tinyModelDir)
	names := c.Names()
	if len(names) != len(weightMap) || !slices.IsSorted(names) {
		t.Fatalf("Names: %d sorted=%v, index has %d", len(names), slices.IsSorted(names), len(weightMap))
	}
	var numel, bytes int64
	files := map[string]int{}
	for _, name := range names {
		ti, err := c.Tensor(name)
		if err != nil {
			t.Error(err)
			continue
		}
		want := kernels.BF16
		if strings.HasSuffix(name, ".mlp.gate.expert_bias") {
			want = kernels.F32
		}
		if ti.DType != want {
			t.Errorf("%s: dtype %v, want %v", name, ti.DType, want)
		}
		if ti.File != weightMap[name] {
			t.Errorf("%s: from %s, the index says %s", name, ti.File, weightMap[name])
		}
		n := int64(1)
		for _, s := range ti.Shape {
			n *= int64(s)
		}
		if int64(len(ti.Data)) != n*int64(ti.DType.Size()) {
			t.Errorf("%s: %d bytes for %v", name, len(ti.Data), ti.Shape)
		}
		numel += n
		bytes += int64(len(ti.Data))
		files[ti.File]++
	}
	if numel != 18_089_328 || bytes != 36_178_880 || len(files) != 3 {
		t.Errorf("%d elements in %d bytes over %d files, want 18,089,328 in 36,178,880 over 3", numel, bytes, len(files))
	}
	if _, err := c.Expect("model.word_embeddings.weight", []kernels.DType{kernels.BF16}, 8192, 256); err != nil {
		t.Error(err)
	}
}

func BenchmarkOpenCheckpointTiny(b *testing.B) {
	for b.Loop() {
		c, err := OpenCheckpoint(tinyModelDir)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

func ExampleCheckpoint_Expect() {
	c, err := OpenCheckpoint(tinyModelDir)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	_, err = c.Expect("model.norm.weight", []kernels.DType{kernels.BF16}, 512)
	fmt.Println(err)
	// Output: model: tensor "model.norm.weight" has shape [256], want [512]
}
