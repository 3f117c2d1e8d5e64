package services

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dlmesh/dlmesh/errdefs"
)

func ids(list []Instance) []string {
	out := make([]string, len(list))
	for i, in := range list {
		out[i] = in.ID
	}
	return out
}

func recvSet(tb testing.TB, ch <-chan []Instance) []Instance {
	tb.Helper()
	select {
	case set, ok := <-ch:
		if !ok {
			tb.Fatal("watch channel closed")
		}
		return set
	case <-time.After(5 * time.Second):
		tb.Fatal("no watch update")
	}
	return nil
}

func expectNoUpdate(tb testing.TB, ch <-chan []Instance) {
	tb.Helper()
	// Register and Deregister notify before returning, so a pending update would be here now.
	select {
	case set := <-ch:
		tb.Errorf("unexpected update %v", ids(set))
	default:
	}
}

func eqIDs(a []string, b ...string) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func TestMemRegistryWatch(t *testing.T) {
	ctx := t.Context()
	r := NewMemRegistry()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.Register(ctx, Instance{ID: "e1", Kind: KindExpertd, Addr: "127.0.0.1:1"}))

	wctx, wcancel := context.WithCancel(ctx)
	ch, err := r.Watch(wctx, KindExpertd)
	must(err)
	if got := ids(recvSet(t, ch)); !eqIDs(got, "e1") {
		t.Fatalf("first set %v, want the current one [e1]", got)
	}

	must(r.Register(ctx, Instance{ID: "e0", Kind: KindExpertd, Addr: "127.0.0.1:2"}))
	if got := ids(recvSet(t, ch)); !eqIDs(got, "e0", "e1") {
		t.Errorf("after register %v, want [e0 e1] (sorted)", got)
	}

	// Other kinds and no-op changes do not notify.
	must(r.Register(ctx, Instance{ID: "a0", Kind: KindAttnd, Addr: "127.0.0.1:3"}))
	must(r.Register(ctx, Instance{ID: "e0", Kind: KindExpertd, Addr: "127.0.0.1:2"}))
	must(r.Deregister(ctx, "nope"))
	expectNoUpdate(t, ch)

	// A changed instance notifies.
	must(r.Register(ctx, Instance{ID: "e0", Kind: KindExpertd, Addr: "127.0.0.1:2", Tags: []string{"group=0"}}))
	if set := recvSet(t, ch); len(set) != 2 || len(set[0].Tags) != 1 {
		t.Errorf("after retag %v", set)
	}

	must(r.Deregister(ctx, "e1"))
	if got := ids(recvSet(t, ch)); !eqIDs(got, "e0") {
		t.Errorf("after deregister %v, want [e0]", got)
	}

	// A slow receiver gets only the latest set.
	must(r.Register(ctx, Instance{ID: "e2", Kind: KindExpertd, Addr: "127.0.0.1:4"}))
	must(r.Register(ctx, Instance{ID: "e3", Kind: KindExpertd, Addr: "127.0.0.1:5"}))
	must(r.Deregister(ctx, "e0"))
	if got := ids(recvSet(t, ch)); !eqIDs(got, "e2", "e3") {
		t.Errorf("coalesced set %v, want [e2 e3]", got)
	}
	expectNoUpdate(t, ch)

	// A kind change notifies both kinds; a watcher of every kind sees everything.
	all, err := r.Watch(ctx, "")
	must(err)
	if got := ids(recvSet(t, all)); !eqIDs(got, "a0", "e2", "e3") {
		t.Errorf("all kinds %v", got)
	}
	must(r.Register(ctx, Instance{ID: "e3", Kind: KindAttnd, Addr: "127.0.0.1:5"}))
	if got := ids(recvSet(t, ch)); !eqIDs(got, "e2") {
		t.Errorf("after kind change %v, want [e2]", got)
	}
	if got := ids(recvSet(t, all)); !eqIDs(got, "a0", "e2", "e3") {
		t.Errorf("all kinds after kind change %v", got)
	}

	wcancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed after its context ended")
		}
	}
}

func TestMemRegistryCopies(t *testing.T) {
	ctx := t.Context()
	r := NewMemRegistry()
	in := Instance{ID: "g", Kind: KindGateway, Addr: "x:1", Tags: []string{"a"}, Meta: map[string]string{"k": "v"}}
	if err := r.Register(ctx, in); err != nil {
		t.Fatal(err)
	}
	in.Tags[0] = "mutated"
	in.Meta["k"] = "mutated"
	list, _ := r.Instances(ctx, KindGateway)
	list[0].Tags[0] = "mutated too"
	list, _ = r.Instances(ctx, KindGateway)
	if list[0].Tags[0] != "a" || list[0].Meta["k"] != "v" {
		t.Errorf("registry state shared with callers: %+v", list[0])
	}
}

func TestMemRegistryValidates(t *testing.T) {
	r := NewMemRegistry()
	for _, in := range []Instance{
		{Kind: KindAttnd, Addr: "x:1"},
		{ID: "a", Addr: "x:1"},
		{ID: "a", Kind: KindAttnd},
	} {
		if err := r.Register(t.Context(), in); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Register(%+v) = %v, want errdefs.ErrInvalidArgument", in, err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := r.Watch(ctx, KindAttnd); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch on an ended context: %v", err)
	}
}

// Many writers and watchers at once (run with -race): every watcher ends with the final set.
func TestMemRegistryConcurrent(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r := NewMemRegistry()
	const writers, per = 4, 25
	var watchers sync.WaitGroup
	finals := make([][]Instance, 3)
	for w := range finals {
		ch, err := r.Watch(ctx, KindExpertd)
		if err != nil {
			t.Fatal(err)
		}
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			for set := range ch {
				finals[w] = set
			}
		}()
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				id := fmt.Sprintf("e%d-%d", w, i)
				_ = r.Register(ctx, Instance{ID: id, Kind: KindExpertd, Addr: "x:1"})
				if i%2 == 1 {
					_ = r.Deregister(ctx, id)
				}
			}
		}()
	}
	wg.Wait()
	want, _ := r.Instances(ctx, KindExpertd)
	if len(want) != writers*((per+1)/2) {
		t.Fatalf("%d instances left", len(want))
	}
	// A buffered last update is still delivered before the close.
	cancel()
	watchers.Wait()
	for w, got := range finals {
		if !eqIDs(ids(got), ids(want)...) {
			t.Errorf("watcher %d ended with %d instances, want %d", w, len(got), len(want))
		}
	}
}
