package attnd_test

import (
	"context"
	"encoding/binary"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// sessionFields are the fields an InvalidArgument from Open or Step may name.
var sessionFields = []string{"session_id", "capacity", "block_length", "sessions", "start_pos", "tokens", "out_rows", "top_k", "inv_temperature", "token", "position", "pos"}

func namesField(msg string) bool {
	for _, f := range sessionFields {
		if strings.Contains(msg, f) {
			return true
		}
	}
	return false
}

// FuzzOpen sends crafted Open requests to a real attnd: never a panic; OK (then closed again),
// InvalidArgument naming a field, or ResourceExhausted.
func FuzzOpen(f *testing.F) {
	reg := services.NewMemRegistry()
	startExpertd(f, reg, "e0", model.AllExperts(16))
	_, c, _ := startAttnd(f, reg)
	f.Add("s", int32(64), int32(32))
	f.Add("", int32(64), int32(0))
	f.Add("s", int32(0), int32(0))
	f.Add("s", int32(1<<30), int32(-1))
	f.Add("s", int32(8), int32(9))
	f.Fuzz(func(t *testing.T, id string, capacity, blockLen int32) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		id = strings.ToValidUTF8(id, "?")
		_, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: capacity, BlockLength: blockLen})
		switch status.Code(err) {
		case codes.OK:
			if _, err := c.Close(ctx, &pb.CloseRequest{SessionId: id}); err != nil {
				t.Fatal(err)
			}
		case codes.InvalidArgument:
			if !namesField(status.Convert(err).Message()) {
				t.Fatalf("InvalidArgument names no field: %v", err)
			}
		case codes.ResourceExhausted:
		default:
			t.Fatalf("Open(%q, %d, %d): %v", id, capacity, blockLen, err)
		}
	})
}

// FuzzStep steps a session of capacity 64 (block 32) with crafted fields, alone or twice in one
// request: never a panic; OK with no NaN log-sum-exp, or InvalidArgument naming a
// field; non-finite inv_temperature is refused.
func FuzzStep(f *testing.F) {
	reg := services.NewMemRegistry()
	startExpertd(f, reg, "e0", model.AllExperts(16))
	_, c, h := startAttnd(f, reg)
	waitHealth(f, h, 1, 10*time.Second) // SERVING
	ctx := context.Background()
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: "s", Capacity: 64}); err != nil {
		f.Fatal(err)
	}
	i32 := func(v ...int32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
		}
		return b
	}
	f.Add(int32(0), i32(952, 2311, 449, 945), int32(4), int32(1), float32(1), false, "s")
	f.Add(int32(0), i32(1, 2), int32(2), int32(8), float32(0.5), true, "s")
	f.Add(int32(60), i32(1, 2, 3, 4, 5, 6, 7, 8), int32(8), int32(1), float32(1), false, "s")
	f.Add(int32(-1), i32(1), int32(1), int32(-5), float32(-1), false, "s")
	f.Add(int32(0), i32(-1, 1<<30), int32(3), int32(5000), float32(math.NaN()), false, "s")
	f.Add(int32(0), i32(1), int32(1), int32(1), float32(math.Inf(1)), false, "s")
	f.Add(int32(0), i32(1), int32(1), int32(1), float32(1), false, "unknown")
	f.Fuzz(func(t *testing.T, startPos int32, tokBytes []byte, outRows, topK int32, inv float32, twice bool, id string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if len(tokBytes) > 4*128 {
			tokBytes = tokBytes[:4*128]
		}
		toks := make([]int32, len(tokBytes)/4)
		for i := range toks {
			toks[i] = int32(binary.LittleEndian.Uint32(tokBytes[4*i:]))
		}
		id = strings.ToValidUTF8(id, "?")
		st := &pb.SessionStep{SessionId: id, StartPos: startPos, Tokens: toks, OutRows: outRows, TopK: topK, InvTemperature: inv}
		req := &pb.StepRequest{Sessions: []*pb.SessionStep{st}}
		if twice {
			req.Sessions = append(req.Sessions, st)
		}
		resp, err := c.Step(ctx, req)
		finiteInv := !math.IsNaN(float64(inv)) && !math.IsInf(float64(inv), 0)
		switch status.Code(err) {
		case codes.OK:
			if !finiteInv {
				t.Fatalf("accepted inv_temperature %v", inv)
			}
			for _, r := range resp.GetResults() {
				lse := r.GetLse()
				for i := 0; i+4 <= len(lse); i += 4 {
					if v := math.Float32frombits(binary.LittleEndian.Uint32(lse[i:])); math.IsNaN(float64(v)) {
						t.Fatalf("lse[%d] is NaN for inv_temperature %v", i/4, inv)
					}
				}
			}
		case codes.InvalidArgument:
			if !namesField(status.Convert(err).Message()) {
				t.Fatalf("InvalidArgument names no field: %v", err)
			}
		case codes.NotFound:
			if id == "s" {
				t.Fatalf("the open session not found: %v", err)
			}
		default:
			t.Fatalf("Step: %v", err)
		}
	})
}
