package cluster

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
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

// startLeaseCluster starts data nodes a, b and c, each recording the
// grants it is asked for, and returns them with the leader.
func startLeaseCluster(t *testing.T) (*testCluster, map[string]*grants, []string, *testNode) {
	tc := newTestCluster(t)
	g := map[string]*grants{"a": {}, "b": {}, "c": {}}
	tc.tweak = func(c *Config) { c.Grant = g[c.Name].grant }
	a := tc.bootstrapData("a")
	tc.admit(a, RoleData, "b", "c")
	all := []string{"a", "b", "c"}
	tc.converged(all...)
	return tc, g, all, tc.leader(all...)
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
	tc, g, all, leader := startLeaseCluster(t)
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

// TestEarlierGrants: every grant is proved by an entry naming its node
// that every node applies after the request was sent, so a new leader's
// EarlierGrants bounds each earlier grant from below (the safety a
// promotion counts on), and proofs do not move the catalog index.
func TestEarlierGrants(t *testing.T) {
	tc, _, all, leader := startLeaseCluster(t)
	asked := map[string]time.Time{}
	var index uint64
	for round := 0; round < 3; round++ {
		for _, name := range all {
			now := time.Now()
			lg, err := renew(tc.nodes[name])
			if err != nil {
				t.Fatalf("lease for %s: %v", name, err)
			}
			asked[name] = now
			if index != 0 && lg.Index != index {
				t.Errorf("the catalog index moved from %d to %d with nothing but renewals", index, lg.Index)
			}
			index = lg.Index
		}
	}
	if _, err := leader.c.EarlierGrants(context.Background(), leader.c.Term()+1); !errors.Is(err, ErrNotLeader) {
		t.Errorf("EarlierGrants for a term this node does not lead: %v, want ErrNotLeader", err)
	}
	tc.net.partition(leader.addr)
	cut := time.Now()
	var rest []string
	for _, name := range all {
		if name != leader.name {
			rest = append(rest, name)
		}
	}
	nl := tc.leader(rest...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := nl.c.EarlierGrants(ctx, nl.c.Term())
	if err != nil {
		t.Fatalf("EarlierGrants on the new leader %s: %v", nl.name, err)
	}
	for _, name := range all {
		p, ok := e.Nodes[name]
		switch {
		case !ok:
			t.Errorf("no proof recorded for %s", name)
		case p.Before(asked[name]):
			t.Errorf("%s's last grant was asked at %v, its proof applied earlier, at %v", name, asked[name], p)
		}
	}
	if !slices.Contains(e.Leaders, leader.name) {
		t.Errorf("earlier leaders %v: the old leader %s is not among them", e.Leaders, leader.name)
	}
	if slices.Contains(e.Leaders, nl.name) {
		t.Errorf("earlier leaders %v include the new leader %s, which led no earlier term", e.Leaders, nl.name)
	}
	// A proof the old leader committed just before the cut may be applied
	// here only once this leader commits (it learns the commit index
	// then): later, which is safe. Not much later, or nothing is gained.
	if p := e.Nodes[leader.name]; p.Sub(cut) > 3*time.Second {
		t.Errorf("the old leader's proof applied %v after the cut", p.Sub(cut))
	}
	if e.Floor.After(asked[leader.name]) {
		t.Errorf("floor %v after the grants: the new leader restarted or restored?", e.Floor)
	}
}

// TestLeaseProofApply: a proof records when it was applied, per node and
// per term, without moving the catalog index or notifying a change; a
// malformed one is refused and records nothing; a restore raises the floor.
func TestLeaseProofApply(t *testing.T) {
	f := newFSM()
	apply := func(index, term uint64, cmd Command) error {
		p, err := encodeCommand(cmd)
		if err != nil {
			t.Fatal(err)
		}
		return f.Apply(&raft.Log{Index: index, Term: term, Data: p}).(applyResult).err
	}
	if err := apply(1, 1, Noop{}); err != nil {
		t.Fatal(err)
	}
	<-f.changes
	t1 := time.Now()
	if err := apply(2, 1, LeaseProof{Leader: "a", Nodes: []string{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
	t2 := time.Now()
	if err := apply(3, 2, LeaseProof{Leader: "b", Nodes: []string{"b"}}); err != nil {
		t.Fatal(err)
	}
	if err := apply(4, 2, LeaseProof{Leader: "b", Nodes: []string{""}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a proof naming an empty node: %v, want ErrInvalid", err)
	}
	if err := apply(4, 2, LeaseProof{Nodes: []string{"c"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a proof without its leader: %v, want ErrInvalid", err)
	}
	if f.index() != 1 {
		t.Errorf("catalog index %d after proofs, want 1", f.index())
	}
	select {
	case <-f.changes:
		t.Error("a proof notified a catalog change")
	default:
	}
	e := f.earlier(3)
	if a := e.Nodes["a"]; a.Before(t1) || a.After(t2) {
		t.Errorf("a's proof at %v, want between %v and %v", a, t1, t2)
	}
	if !e.Nodes["b"].After(e.Nodes["a"]) || !slices.Equal(e.Leaders, []string{"a", "b"}) {
		t.Errorf("b's later proof %v (a %v), leaders %v (want [a b])", e.Nodes["b"], e.Nodes["a"], e.Leaders)
	}
	if _, ok := e.Nodes[""]; ok {
		t.Error("the refused proof was recorded")
	}
	if _, ok := e.Nodes["c"]; ok {
		t.Error("the refused proof was recorded")
	}
	// For term 2 (its own), only term 1's proofs count: b's of term 1.
	e2 := f.earlier(2)
	if e2.Nodes["b"] != e.Nodes["a"] || e2.Nodes["a"] != e.Nodes["a"] || !slices.Equal(e2.Leaders, []string{"a"}) {
		t.Errorf("for term 2: nodes %v, leaders %v; want both at term 1's proof %v, leaders [a]", e2.Nodes, e2.Leaders, e.Nodes["a"])
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var out sink
	if err := snap.Persist(&out); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := f.Restore(readCloser(out.Bytes())); err != nil {
		t.Fatal(err)
	}
	if fl := f.earlier(3).Floor; fl.Before(before) {
		t.Errorf("floor %v after a restore at %v", fl, before)
	}
}
