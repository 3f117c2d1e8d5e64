package gateway

import (
	"strings"
	"testing"
)

// TestRemoteSessionIDs: two gateways (two steppers) sharing an attnd give the same engine session
// different attnd session ids, so requests with equal ids never collide there.
func TestRemoteSessionIDs(t *testing.T) {
	a, b := NewRemoteStepper(nil, 0, 0), NewRemoteStepper(nil, 0, 0)
	ia, ib := a.remoteID("req#1"), b.remoteID("req#1")
	if ia == ib {
		t.Fatalf("two steppers both use attnd session id %q", ia)
	}
	for _, id := range []string{ia, ib} {
		if !strings.HasSuffix(id, "/req#1") {
			t.Errorf("attnd session id %q does not end with the engine's", id)
		}
	}
	if a.remoteID("req#2") == ia || a.remoteID("req#1") != ia {
		t.Error("a stepper's attnd session ids are not a function of the engine's")
	}
}
