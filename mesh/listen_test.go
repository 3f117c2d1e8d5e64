package mesh_test

import (
	"errors"
	"net"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/dlmesh/dlmesh/mesh"
)

func TestConfigListenBases(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  mesh.Config
		ok   bool
	}{
		{"defaults", mesh.Config{}, true},
		{"fixed expertd base", mesh.Config{ExpertdListen: "127.0.0.1:7101"}, true},
		{"no port", mesh.Config{AttndListen: "127.0.0.1"}, false},
		{"port out of range", mesh.Config{ExpertdListen: "127.0.0.1:70000"}, false},
		{"last replica past 65535", mesh.Config{ExpertdListen: "127.0.0.1:65535", Groups: 2}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.ModelDir = tinyDir
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, mesh.ErrBadConfig)) {
				t.Errorf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// freePorts finds n consecutive free loopback ports (best effort: another process may take one
// before the mesh binds it, then the test fails loudly rather than passing wrongly).
func freePorts(tb testing.TB, n int) int {
	tb.Helper()
	for try := 0; try < 20; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		base := l.Addr().(*net.TCPAddr).Port
		l.Close()
		ok := base+n-1 <= 65535
		for i := 1; ok && i < n; i++ {
			li, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+i)))
			if err != nil {
				ok = false
				break
			}
			li.Close()
		}
		if ok {
			return base
		}
	}
	tb.Fatal("no run of free ports")
	return 0
}

// The up flags' internal ports and --reflection reach the servers.
func TestMeshListenAndReflection(t *testing.T) {
	base := freePorts(t, 2)
	m := upMesh(t, mesh.Config{ExpertdListen: net.JoinHostPort("127.0.0.1", strconv.Itoa(base)), Reflection: true})
	a := m.Addrs()
	for i, want := range []string{strconv.Itoa(base), strconv.Itoa(base + 1)} {
		if _, p, _ := net.SplitHostPort(a.Expertd[i]); p != want {
			t.Errorf("expertd %d on %s, want port %s", i, a.Expertd[i], want)
		}
	}
	conn, err := grpc.NewClient(a.Gateway, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := rpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("reflection on a server with Reflection: %v", err)
	}
	found := false
	for _, s := range resp.GetListServicesResponse().GetService() {
		found = found || s.GetName() == "dlmesh.v1.Gateway"
	}
	if !found {
		t.Errorf("reflection lists %v, want dlmesh.v1.Gateway among them", resp.GetListServicesResponse().GetService())
	}
	_ = stream.CloseSend()
}

// Reflection is off by default.
func TestMeshNoReflectionByDefault(t *testing.T) {
	m := sharedMesh(t)
	conn, err := grpc.NewClient(m.Addrs().Gateway, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := rpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err == nil {
		_ = stream.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}})
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("reflection without the flag: %v, want Unimplemented", err)
	}
}
