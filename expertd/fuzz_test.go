package expertd_test

import (
	"context"
	"encoding/binary"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// computeFields are the request fields an InvalidArgument from Compute may name.
var computeFields = []string{"layer", "rows", "hidden", "top_k", "dtype", "x ", "ids", "weights"}

// FuzzCompute sends crafted Compute requests to a real expertd over loopback gRPC: it must never
// panic, answer OK or InvalidArgument naming a field, and refuse non-finite weights and rows.
func FuzzCompute(f *testing.F) {
	_, c, _ := start(f, []int{0, 1, 2, 3})
	good := randomInput(2, 256, 4, []int32{0, 1, 2, 3}, 1)
	req := good.request(2, pb.DType_DTYPE_F32)
	f.Add(req.Layer, req.Rows, req.Hidden, req.TopK, int32(req.Dtype), req.X, req.Ids, req.Weights)
	bf := good.request(2, pb.DType_DTYPE_BF16)
	f.Add(bf.Layer, bf.Rows, bf.Hidden, bf.TopK, int32(bf.Dtype), bf.X, bf.Ids, bf.Weights)
	f.Add(int32(2), int32(65536), int32(256), int32(4), int32(1), make([]byte, 48), []byte{}, []byte{})
	f.Add(int32(0), int32(1), int32(256), int32(1), int32(1), make([]byte, 1024), make([]byte, 4), make([]byte, 4))
	nan := make([]byte, 4)
	binary.LittleEndian.PutUint32(nan, math.Float32bits(float32(math.NaN())))
	f.Add(int32(2), int32(1), int32(256), int32(1), int32(1), make([]byte, 1024), make([]byte, 4), nan)
	f.Add(int32(2), int32(-1), int32(-1), int32(0), int32(99), []byte(nil), []byte(nil), []byte(nil))
	f.Fuzz(func(t *testing.T, layer, rows, hidden, topK, dtype int32, x, ids, weights []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req := &pb.ExpertsRequest{Layer: layer, Rows: rows, Hidden: hidden, TopK: topK, Dtype: pb.DType(dtype), X: x, Ids: ids, Weights: weights}
		resp, err := c.Compute(ctx, req)
		switch status.Code(err) {
		case codes.OK:
			if nonFinite(weights, false) || nonFinite(x, pb.DType(dtype) == pb.DType_DTYPE_BF16) {
				t.Fatalf("accepted non-finite x or weights (rows %d, hidden %d, top_k %d)", rows, hidden, topK)
			}
			if len(resp.GetY()) != len(x) {
				t.Fatalf("y has %d bytes for x of %d", len(resp.GetY()), len(x))
			}
		case codes.InvalidArgument:
			msg := status.Convert(err).Message()
			if !containsAny(msg, computeFields) {
				t.Fatalf("InvalidArgument names no field: %q", msg)
			}
		default:
			t.Fatalf("Compute: %v (want OK or InvalidArgument)", err)
		}
	})
}

// nonFinite reports whether b, read as little-endian f32 (or bf16), holds a NaN or Inf.
func nonFinite(b []byte, bf16 bool) bool {
	if bf16 {
		for i := 0; i+2 <= len(b); i += 2 {
			v := math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[i:])) << 16)
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return true
			}
		}
		return false
	}
	for i := 0; i+4 <= len(b); i += 4 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(b[i:]))
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return true
		}
	}
	return false
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
