package main

import (
	"testing"

	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
)

// The live block marks the prompt, and the positions past gen_length that are decoded with their
// block but never returned.
func TestLiveBlockMarksBeyondGenLength(t *testing.T) {
	lb := liveBlock{gen: 4}
	cells := lb.apply(&pb.StepEvent{Block: 0, BlockStart: -2, BlockLength: 8, Changes: []*pb.TokenChange{
		{Position: 0, TokenText: "a", Kind: pb.TokenChange_KIND_UNMASK},
		{Position: 5, TokenText: "b", Kind: pb.TokenChange_KIND_UNMASK}}})
	for i, c := range cells {
		pos := i - 2
		if c.prompt != (pos < 0) || c.beyond != (pos >= 4) {
			t.Errorf("cell %d (position %d): prompt %v beyond %v", i, pos, c.prompt, c.beyond)
		}
	}
	if cells[2].text != "a" || cells[7].text != "b" || !cells[7].beyond || cells[7].mark != markUnmask {
		t.Errorf("changes not applied: %+v %+v", cells[2], cells[7])
	}
}
