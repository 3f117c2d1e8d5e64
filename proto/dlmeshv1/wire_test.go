package dlmeshv1_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// Tensors must travel as bytes; the only repeated floating-point field allowed is the small
// per-row convenience copy of the argmax probability.
var repeatedFloatAllowed = map[protoreflect.FullName]bool{
	"dlmesh.v1.SessionResult.probs": true,
}

func TestNoRepeatedFloatTensors(t *testing.T) {
	files := []protoreflect.FileDescriptor{
		pb.File_dlmesh_v1_common_proto,
		pb.File_dlmesh_v1_gateway_proto,
		pb.File_dlmesh_v1_attention_proto,
		pb.File_dlmesh_v1_experts_proto,
	}
	var walk func(protoreflect.MessageDescriptors)
	walk = func(msgs protoreflect.MessageDescriptors) {
		for i := range msgs.Len() {
			m := msgs.Get(i)
			walk(m.Messages())
			for j := range m.Fields().Len() {
				f := m.Fields().Get(j)
				if !f.IsList() {
					continue
				}
				if k := f.Kind(); (k == protoreflect.FloatKind || k == protoreflect.DoubleKind) && !repeatedFloatAllowed[f.FullName()] {
					t.Errorf("%s is a repeated %s; tensors go in bytes fields", f.FullName(), k)
				}
			}
		}
	}
	for _, fd := range files {
		walk(fd.Messages())
	}
}

func TestServices(t *testing.T) {
	tests := []struct {
		service string
		methods []string
	}{
		{"dlmesh.v1.Gateway", []string{"Generate"}},
		{"dlmesh.v1.Attention", []string{"Open", "Step", "Close", "Info", "Renew"}},
		{"dlmesh.v1.Experts", []string{"Compute", "ComputeStream", "Info"}},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(tt.service))
			if err != nil {
				t.Fatal(err)
			}
			sd := d.(protoreflect.ServiceDescriptor)
			if got := sd.Methods().Len(); got != len(tt.methods) {
				t.Errorf("%d methods, want %d", got, len(tt.methods))
			}
			for _, m := range tt.methods {
				if sd.Methods().ByName(protoreflect.Name(m)) == nil {
					t.Errorf("method %s missing", m)
				}
			}
		})
	}
	if !pb.Gateway_ServiceDesc.Streams[0].ServerStreams {
		t.Error("Gateway.Generate is not server-streaming")
	}
}

func TestRoundTrip(t *testing.T) {
	tauMask := 0.9
	in := &pb.GenerateRequest{
		RequestId: "r1",
		Input: &pb.GenerateRequest_Messages{Messages: &pb.ChatMessages{Messages: []*pb.ChatMessage{
			{Role: "user", Content: "hi"},
		}}},
		Params: &pb.DecodeParams{Mode: "s", TauMask: &tauMask, GenLength: 64, BlockLength: 32, Stop: []string{"\n\n"}},
	}
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out := new(pb.GenerateRequest)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, out) {
		t.Errorf("round trip: got %v, want %v", out, in)
	}
	if out.GetParams().TauMask == nil || *out.GetParams().TauMask != tauMask {
		t.Error("tau_mask presence lost")
	}
	if out.GetParams().TauEdit != nil {
		t.Error("tau_edit present though never set")
	}
	if out.GetPrompt() != "" || len(out.GetMessages().GetMessages()) != 1 {
		t.Errorf("oneof input: %v", out.Input)
	}
}
