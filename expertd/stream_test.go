package expertd_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/wire"
)

// TestComputeStreamMatchesCompute: a stream answers each request, in order, exactly as Compute
// does, also when the row count changes between requests (the kept buffers are resized).
func TestComputeStreamMatchesCompute(t *testing.T) {
	held := []int32{0, 1, 2, 3, 4, 5, 6, 7}
	s, c, _ := start(t, expertsOf(held))
	st, err := c.ComputeStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ins := []input{randomInput(9, 256, 4, held, 1), randomInput(3, 256, 4, held, 2), randomInput(9, 256, 4, held, 3)}
	for _, in := range ins { // all sent before any answer is read: answers keep the order
		if err := st.Send(in.request(3, pb.DType_DTYPE_F32)); err != nil {
			t.Fatal(err)
		}
	}
	for i, in := range ins {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		want := localFFN(t, 3, in)
		got := make([]float32, len(want))
		if err := wire.DecodeF32(got, resp.GetY(), false); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("request %d: stream answer differs from the in-process ExpertsFFN", i)
		}
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after CloseSend: %v, want io.EOF", err)
	}
	if n := s.Calls(); n != 3 {
		t.Errorf("Calls() = %d, want 3", n)
	}
}

// TestComputeStreamEndsOnBadRequest: a request Compute refuses ends the stream with Compute's
// status, naming the field.
func TestComputeStreamEndsOnBadRequest(t *testing.T) {
	held := []int32{8, 9, 10, 11, 12, 13, 14, 15}
	_, c, _ := start(t, expertsOf(held))
	st, err := c.ComputeStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	req := randomInput(2, 256, 4, held, 1).request(3, pb.DType_DTYPE_F32)
	req.Rows = 0
	if err := st.Send(req); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "rows 0") {
		t.Errorf("bad request on a stream: %v, want InvalidArgument naming rows", err)
	}
}

// TestShutdownEndsIdleStreams: an open, idle stream does not hold up the graceful stop: it
// ends, and its caller sees that.
func TestShutdownEndsIdleStreams(t *testing.T) {
	held := []int32{0, 1, 2, 3, 4, 5, 6, 7}
	s, c, _ := start(t, expertsOf(held))
	st, err := c.ComputeStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(randomInput(2, 256, 4, held, 1).request(3, pb.DType_DTYPE_F32)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("shutdown with an idle stream: %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("shutdown took %v with an idle stream open", d)
	}
	if _, err := st.Recv(); err == nil {
		t.Error("the idle stream still answers after shutdown")
	}
}
