package attnd

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/dlmesh/dlmesh/model"
	pb "github.com/dlmesh/dlmesh/proto/dlmeshv1"
	"github.com/dlmesh/dlmesh/services"
)

// group is one expert group: the expertd replicas that report the same expert set.
type group struct {
	key     string // model.FormatExperts of the set
	experts []int
	pool    *services.Pool
}

// routes is an immutable snapshot of the expert groups, taken once per step.
type routes struct {
	groups  []*group
	owner   []int  // expert id → index into groups, -1 when no group serves it
	allowed []bool // router mask; nil when every expert is served
}

// degraded reports whether some expert is not served.
func (r *routes) degraded() bool { return r.allowed != nil }

// served is the number of experts some group serves.
func (r *routes) served() int {
	n := 0
	for _, g := range r.owner {
		if g >= 0 {
			n++
		}
	}
	return n
}

// instInfo is what discovery learned about one expertd instance.
type instInfo struct {
	addr    string
	key     string // expert set; "" when the instance is rejected
	experts []int
}

// watchExperts follows the expertd instances in reg until ctx ends, asking each new one for its
// expert set and rebuilding the groups on every change. It runs in its own goroutine.
func (s *Server) watchExperts(ctx context.Context, reg services.Registry) {
	defer close(s.watchDone)
	ch, err := reg.Watch(ctx, services.KindExpertd)
	if err != nil {
		slog.Error("attnd: watch expertd", "err", err)
		return
	}
	known := map[string]instInfo{}
	var current []services.Instance
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case set, ok := <-ch:
			if !ok {
				return
			}
			current = set
		case <-retry:
		}
		retry = nil
		if s.refresh(ctx, current, known) {
			retry = time.After(time.Second) // an Info call failed: ask again
		}
	}
}

// refresh learns the new instances of set, forgets the gone ones and installs new routes. It
// reports whether some instance could not be asked and should be retried.
func (s *Server) refresh(ctx context.Context, set []services.Instance, known map[string]instInfo) (retry bool) {
	live := map[string]bool{}
	for _, in := range set {
		live[in.ID] = true
		if k, ok := known[in.ID]; ok && k.addr == in.Addr {
			continue
		}
		info, err := s.expertInfo(ctx, in)
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			slog.Warn("attnd: expertd info", "id", in.ID, "addr", in.Addr, "err", err)
			retry = true
			delete(known, in.ID)
			continue
		}
		known[in.ID] = info
	}
	for id := range known {
		if !live[id] {
			delete(known, id)
		}
	}
	byKey := map[string][]services.Instance{}
	sets := map[string][]int{}
	for _, in := range set {
		k, ok := known[in.ID]
		if !ok || k.key == "" {
			continue
		}
		byKey[k.key] = append(byKey[k.key], in)
		sets[k.key] = k.experts
	}
	s.installRoutes(byKey, sets)
	return retry
}

// expertInfo asks one expertd for its expert set and checks it against the model.
func (s *Server) expertInfo(ctx context.Context, in services.Instance) (instInfo, error) {
	cc, err := services.Dial(in.Addr, s.clientCfg)
	if err != nil {
		return instInfo{}, err
	}
	defer cc.Close()
	ictx, cancel := context.WithTimeout(ctx, s.cfg.InfoTimeout)
	defer cancel()
	info, err := pb.NewExpertsClient(cc).Info(ictx, &pb.InfoRequest{})
	if err != nil {
		return instInfo{}, err
	}
	k := instInfo{addr: in.Addr}
	c := s.m.Cfg
	var moe []int32
	for _, l := range c.MoELayers() {
		moe = append(moe, int32(l))
	}
	switch {
	case info.GetFingerprint() != s.fingerprint:
		slog.Error("attnd: expertd serves another checkpoint; ignored", "id", in.ID,
			"fingerprint", info.GetFingerprint(), "want", s.fingerprint)
		return k, nil
	case !slices.Equal(info.GetLayers(), moe):
		slog.Error("attnd: expertd serves other MoE layers; ignored", "id", in.ID, "layers", info.GetLayers(), "want", moe)
		return k, nil
	}
	for _, e := range info.GetExperts() {
		if e < 0 || int(e) >= c.Experts {
			slog.Error("attnd: expertd reports an expert out of range; ignored", "id", in.ID, "expert", e)
			return k, nil
		}
		k.experts = append(k.experts, int(e))
	}
	if len(k.experts) == 0 {
		return k, nil
	}
	k.key = model.FormatExperts(k.experts)
	return k, nil
}

// installRoutes updates the pools from the instances grouped by expert set and publishes the new
// routes. Groups are ordered by their lowest expert; an expert served by several groups is sent
// to the first.
func (s *Server) installRoutes(byKey map[string][]services.Instance, sets map[string][]int) {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	for key, p := range s.pools {
		if _, ok := byKey[key]; !ok {
			_ = p.Close() // a vanished group: connections close as their calls finish
			delete(s.pools, key)
		}
	}
	var gs []*group
	for key, ins := range byKey {
		p, ok := s.pools[key]
		if !ok {
			p = services.NewPool("expertd/"+key, s.cfg.Breaker, s.dial)
			s.pools[key] = p
		}
		if err := p.Update(ins); err != nil {
			slog.Warn("attnd: expert group update", "group", key, "err", err)
		}
		gs = append(gs, &group{key: key, experts: sets[key], pool: p})
	}
	sort.Slice(gs, func(i, j int) bool {
		if gs[i].experts[0] != gs[j].experts[0] {
			return gs[i].experts[0] < gs[j].experts[0]
		}
		return gs[i].key < gs[j].key
	})
	r := &routes{groups: gs, owner: make([]int, s.m.Cfg.Experts)}
	for e := range r.owner {
		r.owner[e] = -1
	}
	for gi, g := range gs {
		for _, e := range g.experts {
			if r.owner[e] < 0 {
				r.owner[e] = gi
			}
		}
	}
	if slices.Contains(r.owner, -1) {
		r.allowed = make([]bool, len(r.owner))
		for e, g := range r.owner {
			r.allowed[e] = g >= 0
		}
	}
	s.routes.Store(r)
	s.followRoutes(r)
}

func (s *Server) dial(in services.Instance) (*grpc.ClientConn, error) {
	return services.Dial(in.Addr, s.clientCfg)
}

// Groups describes the current expert groups: "0-7×2" is experts 0-7 served by two replicas.
func (s *Server) Groups() []string {
	r := s.routes.Load()
	if r == nil {
		return nil
	}
	var out []string
	for _, g := range r.groups {
		out = append(out, fmt.Sprintf("%s×%d", g.key, g.pool.Len()))
	}
	return out
}

// uncovered lists the experts no group serves, for errors.
func (r *routes) uncovered() string {
	var ids []int
	for e, g := range r.owner {
		if g < 0 {
			ids = append(ids, e)
		}
	}
	return strings.TrimSpace(model.FormatExperts(ids))
}
