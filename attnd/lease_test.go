package attnd_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/attnd"
	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// TestSessionLeases: sessions whose owner stops renewing are freed once their lease runs out
// (the KV budget with them); a session kept alive by Renew, or by Steps, survives; Renew names
// the sessions attnd no longer holds.
func TestSessionLeases(t *testing.T) {
	reg := services.NewMemRegistry()
	startExpertd(t, reg, "e0", model.AllExperts(16))
	const lease = time.Second // several steps of a loaded 2-core machine
	a, c, _ := startAttndCfg(t, reg, attnd.Config{ModelDir: tinyDir, SessionLease: lease})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"orphan-1", "orphan-2", "renewed", "stepped"} {
		if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: id, Capacity: 32}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Open(ctx, &pb.OpenRequest{SessionId: "long", Capacity: 32, LeaseMs: 60_000}); err != nil {
		t.Fatal(err)
	}
	toks := []int32{952, 2311, 449, 945}
	pos := 0
	for end := time.Now().Add(3 * lease); time.Now().Before(end); {
		if _, err := c.Renew(ctx, &pb.RenewRequest{SessionIds: []string{"renewed"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Step(ctx, &pb.StepRequest{Sessions: []*pb.SessionStep{{SessionId: "stepped", StartPos: int32(pos), Tokens: toks, OutRows: 1, TopK: 1}}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(lease / 6)
	}
	if n, x := a.Sessions(), a.Expired(); n != 3 || x != 2 {
		t.Errorf("%d sessions open, %d expired after 3 leases; want the 2 orphans freed and 3 left", n, x)
	}
	resp, err := c.Renew(ctx, &pb.RenewRequest{SessionIds: []string{"orphan-1", "renewed", "stepped", "long", "never"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetUnknown(); !slices.Equal(got, []string{"orphan-1", "never"}) {
		t.Errorf("Renew names %v unknown, want [orphan-1 never]", got)
	}
	if l := a.Load(); l.GetKvCapacityTokens() != 3*32 {
		t.Errorf("%d KV positions reserved after the orphans expired, want %d", l.GetKvCapacityTokens(), 3*32)
	}
}
