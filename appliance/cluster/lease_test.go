package cluster

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// grants records the grants a node's Config.Grant was asked for.
type grants struct {
	mu  sync.Mutex
	got map[string][]uint64 // node -> terms
}

func (g *grants) grant(node string, term uint64) (Granted, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.got == nil {
		g.got = map[string][]uint64{}
	}
	g.got[node] = append(g.got[node], term)
	return Granted{Duration: time.Second, Lapsed: []string{"gone"}}, nil
}

func (g *grants) count(node string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.got[node])
}

func renew(n *testNode) (LeaseGrant, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return n.c.RenewLease(ctx)
}

// TestLeaseGrantedByTheLeaderOnly: followers get their lease from the
// leader over the RPC (one connection, many renewals), the leader from
// itself; a leader cut off from the majority grants none, also not to
// itself, and a follower cut off with it gets none; the majority's new
// leader grants in its own, later term.
func TestLeaseGrantedByTheLeaderOnly(t *testing.T) {
	tc := newTestCluster(t)
	g := map[string]*grants{"a": {}, "b": {}, "c": {}}
	tc.tweak = func(c *Config) { c.Grant = g[c.Name].grant }
	a := tc.bootstrapData("a")
	tc.admit(a, RoleData, "b", "c")
	all := []string{"a", "b", "c"}
	tc.converged(all...)
	leader := tc.leader(all...)
	for round := 0; round < 3; round++ {
		for _, name := range all {
			g, err := renew(tc.nodes[name])
			if err != nil || g.Duration != time.Second || g.Index == 0 || len(g.Lapsed) != 1 || g.Lapsed[0] != "gone" {
				t.Fatalf("round %d: lease for %s: %+v, %v; want 1s at an index", round, name, g, err)
			}
			if err := waitApplied(tc.nodes[name], g.Index); err != nil {
				t.Fatalf("applying up to the grant's index %d on %s: %v", g.Index, name, err)
			}
		}
	}
	for _, name := range all {
		if n := g[leader.name].count(name); n != 3 {
			t.Errorf("the leader recorded %d grants to %s, want 3", n, name)
		}
		if name != leader.name && g[name].count(name)+g[name].count(leader.name) != 0 {
			t.Errorf("follower %s granted leases", name)
		}
	}
	oldTerm := leader.c.Term()

	tc.net.partition(leader.addr)
	if _, err := renew(leader); err == nil {
		t.Error("a leader cut off from the majority granted itself a lease")
	}
	var rest []string
	for _, name := range all {
		if name != leader.name {
			rest = append(rest, name)
		}
	}
	newLeader := tc.leader(rest...)
	if newLeader.c.Term() <= oldTerm {
		t.Errorf("new leader's term %d, old %d", newLeader.c.Term(), oldTerm)
	}
	eventually(t, "a lease from the new leader", func() bool {
		_, err := renew(tc.nodes[rest[0]])
		return err == nil
	})
	if _, err := renew(leader); err == nil {
		t.Error("the cut-off old leader got a lease")
	}
	g[newLeader.name].mu.Lock()
	for node, terms := range g[newLeader.name].got {
		for _, term := range terms {
			if term <= oldTerm {
				t.Errorf("new leader granted %s a lease in term %d, not after %d", node, term, oldTerm)
			}
		}
	}
	g[newLeader.name].mu.Unlock()

	tc.net.heal()
	eventually(t, "the old leader's lease back", func() bool {
		_, err := renew(leader)
		return err == nil
	})
}

func waitApplied(n *testNode, index uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.c.WaitApplied(ctx, index)
}

// TestLeaseWithoutGrant: a cluster configured without Grant refuses leases
// with a clear error.
func TestLeaseWithoutGrant(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrapData("a")
	if _, err := renew(a); !errors.Is(err, ErrUnsupported) {
		t.Errorf("lease without Grant: %v, want ErrUnsupported", err)
	}
}
