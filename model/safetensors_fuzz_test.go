package model

import (
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzParseHeader feeds arbitrary bytes to ParseHeader (as a JSON header) and to parseFile (as a
// whole file). Neither may panic; an accepted header must describe a consistent layout.
func FuzzParseHeader(f *testing.F) {
	seeds := []string{
		`{}`,
		`{"__metadata__":{"format":"pt"}}`,
		`{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}`,
		`{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}    `,
		`{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"z":{"dtype":"F16","shape":[0,5],"data_offsets":[4,4]}}`,
		`{"q":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[0,3]},"x":{"dtype":"NOPE","shape":[1],"data_offsets":[3,9]}}`,
		`{"f":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`,
		`{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`,
		`{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}`,
		`{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}`,
		`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`,
		`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,9223372036854775807]}}`,
		`{"w":{"dtype":"F32","shape":[1e3],"data_offsets":[0,4000]}}`,
		`{"__metadata__":{"n":1}}`,
		`{"w":null}`,
		`[1,2]`,
		`{"w":{"dtype":"F32"`,
		"\x00\x00\x00",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
		file := binary.LittleEndian.AppendUint64(nil, uint64(len(s)))
		f.Add(append(append(file, s...), make([]byte, 24)...))
	}
	f.Add(binary.LittleEndian.AppendUint64(nil, 1<<63))
	f.Fuzz(func(t *testing.T, b []byte) {
		ts, _, err := ParseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrBadCheckpoint) {
				t.Fatalf("error %v does not match ErrBadCheckpoint", err)
			}
		} else {
			for name, ti := range ts {
				if ti.Name != name || ti.Data != nil {
					t.Fatalf("tensor %q: %+v", name, ti)
				}
				for _, d := range ti.Shape {
					if d < 0 {
						t.Fatalf("tensor %q: negative dimension in %v", name, ti.Shape)
					}
				}
			}
		}
		entries, body, err := parseFile(b)
		if err != nil {
			return
		}
		for name, e := range entries {
			if e.begin < 0 || e.begin > e.end || e.end > int64(len(body)) {
				t.Fatalf("tensor %q: offsets [%d, %d] outside %d data bytes", name, e.begin, e.end, len(body))
			}
			_ = body[e.begin:e.end]
		}
	})
}
