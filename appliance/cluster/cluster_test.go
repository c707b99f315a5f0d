package cluster

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// volumeOn is a CreateVolume of a new volume name (its number i picks a
// unique NAA) placed on nodes.
func volumeOn(name string, i byte, nodes ...string) CreateVolume {
	return CreateVolume{Name: name, ID: "id-" + name, NAA: naa(i), Serial: "sn-" + name, Size: 1 << 30,
		Created: t0, Copies: len(nodes), Placement: nodes}
}

// bootstrapData bootstraps name and records it as a data node.
func (tc *testCluster) bootstrapData(name string) *testNode {
	tc.t.Helper()
	n := tc.bootstrap(name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.c.Admit(ctx, Node{Name: name, Role: RoleData, Link: n.addr}); err != nil {
		tc.t.Fatalf("admit %s itself: %v", name, err)
	}
	return n
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

// TestProposalsReplicate: one node bootstraps, admits two more; a proposal
// from any node (forwarded from followers) is applied everywhere, visible
// on the proposer when Propose returns, and refusals keep their sentinel
// across the forwarding RPC.
func TestProposalsReplicate(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrapData("a")
	tc.admit(a, RoleData, "b", "c")
	names := []string{"a", "b", "c"}
	if v, nv := countVoters(servers(t, a)); v != 3 || nv != 0 {
		t.Fatalf("%d voters and %d non-voters, want 3 and 0", v, nv)
	}
	tc.converged(names...)
	forwarded := 0
	for i, name := range names {
		n := tc.nodes[name]
		if !n.c.IsLeader() {
			forwarded++
		}
		drain(n.c.Changes())
		vol := "v" + name
		propose(t, n, volumeOn(vol, byte(10+i), name, names[(i+1)%3]))
		// The proposer reads its own write as soon as Propose returns.
		if _, ok := n.c.State().Volumes[vol]; !ok {
			t.Errorf("%s does not see volume %s it just created", name, vol)
		}
		select {
		case <-n.c.Changes():
		default:
			t.Errorf("%s: no change notification after creating %s", name, vol)
		}
	}
	if forwarded == 0 {
		t.Fatal("no proposal came from a follower")
	}
	s := tc.converged(names...)
	if got := s.VolumeNames(); !slices.Equal(got, []string{"va", "vb", "vc"}) {
		t.Errorf("volumes %v", got)
	}
	if s.ClusterID == "" || len(s.Nodes) != 3 {
		t.Errorf("cluster ID %q, nodes %v", s.ClusterID, s.NodeNames())
	}

	// Refusals from any node, forwarded or not, keep their sentinel.
	for _, name := range names {
		n := tc.nodes[name]
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.c.Propose(ctx, DropReplica{Volume: "va", Epoch: 7, By: "a", Node: "b"})
		if !errors.Is(err, ErrStaleEpoch) {
			t.Errorf("stale drop from %s: %v, want ErrStaleEpoch", name, err)
		}
		_, err = n.c.Propose(ctx, DropReplica{Volume: "va", Epoch: 1, By: "b", Node: "b"})
		if !errors.Is(err, ErrNotPrimary) {
			t.Errorf("drop by a replica from %s: %v, want ErrNotPrimary", name, err)
		}
		_, err = n.c.Propose(ctx, volumeOn("va", 99, "a"))
		if !errors.Is(err, ErrExists) {
			t.Errorf("duplicate create from %s: %v, want ErrExists", name, err)
		}
		cancel()
	}
	// A replica change by the primary, proposed from another node.
	propose(t, tc.nodes["b"], SetCopyID{Volume: "va", Node: "b", CopyID: "va-b"})
	propose(t, tc.nodes["c"], MarkInSync{Volume: "va", Epoch: 1, By: "a", Node: "b", CopyID: "va-b"})
	if got := tc.converged(names...).Volumes["va"].InSync; !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("in sync %v after MarkInSync", got)
	}
}

// TestMinorityCannotCommit: the leader cut off from the two others cannot
// commit (its Propose fails, then reports no leader) while the majority
// elects a leader and commits; after healing, the old leader has the
// majority's state and not its own lost command.
func TestMinorityCannotCommit(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrapData("a")
	tc.admit(a, RoleData, "b", "c")
	all := []string{"a", "b", "c"}
	old := tc.leader(all...)
	var rest []string
	for _, name := range all {
		if name != old.name {
			rest = append(rest, name)
		}
	}
	tc.converged(all...)

	tc.net.partition(old.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := old.c.Propose(ctx, volumeOn("lost", 1, old.name))
	cancel()
	if err == nil {
		t.Fatal("the isolated leader committed a proposal")
	}
	if !errors.Is(err, ErrOutcomeUnknown) && !errors.Is(err, ErrNoLeader) {
		t.Errorf("isolated leader's proposal: %v, want ErrOutcomeUnknown or ErrNoLeader", err)
	}

	leader := tc.leader(rest...)
	propose(t, tc.nodes[rest[0]], volumeOn("kept", 2, rest...))
	propose(t, leader, AddSnapshot{Volume: "kept", Snapshot: Snapshot{Name: "s", ID: "s1", Created: t0}})

	eventually(t, "the old leader to step down", func() bool { return !old.c.IsLeader() })
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = old.c.Propose(ctx, volumeOn("lost2", 3, old.name))
	cancel()
	if !errors.Is(err, ErrNoLeader) || !strings.Contains(err.Error(), "lost its majority") {
		t.Errorf("proposal on the isolated node: %v, want ErrNoLeader", err)
	}

	tc.net.heal()
	s := tc.converged(all...)
	if _, ok := s.Volumes["kept"]; !ok {
		t.Error("the majority's volume is missing")
	}
	for _, v := range []string{"lost", "lost2"} {
		if _, ok := s.Volumes[v]; ok {
			t.Errorf("volume %s proposed without a majority was committed", v)
		}
	}
}

// TestRestartKeepsState: a follower restarted from its directory catches
// up, and a whole cluster restarted from disk (raft-boltdb) has its
// catalog back.
func TestRestartKeepsState(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrapData("a")
	tc.admit(a, RoleData, "b", "c")
	all := []string{"a", "b", "c"}
	propose(t, a, volumeOn("v1", 1, "a", "b"))
	tc.converged(all...)
	tc.stop("b")
	propose(t, tc.nodes["c"], volumeOn("v2", 2, "c"))
	tc.start("b", false)
	s := tc.converged(all...)
	if _, ok := s.Volumes["v2"]; !ok {
		t.Fatal("restarted follower lacks the volume created while it was down")
	}

	for _, name := range all {
		tc.stop(name)
	}
	for _, name := range all {
		tc.start(name, name == "a") // bootstrapping again must not reset anything
	}
	tc.leader(all...)
	eventually(t, "the catalog after a full restart", func() bool {
		return mustJSON(t, tc.nodes["a"].c.State().Volumes) == mustJSON(t, s.Volumes)
	})
	got := tc.converged(all...)
	if got.ClusterID != s.ClusterID || mustJSON(t, got.Nodes) != mustJSON(t, s.Nodes) {
		t.Errorf("after a full restart: cluster %s nodes %v, want %s %v", got.ClusterID, got.NodeNames(), s.ClusterID, s.NodeNames())
	}
	propose(t, tc.nodes["b"], DeleteVolume{Name: "v2"})
}

// TestSnapshotCatchUp: a node admitted after the log was compacted into a
// snapshot gets the snapshot (FSM Restore) and then the same state.
func TestSnapshotCatchUp(t *testing.T) {
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) {
		c.TrailingLogs = 2
		c.SnapshotThreshold = 1 << 20
	}
	a := tc.bootstrapData("a")
	propose(t, a, volumeOn("v", 1, "a"))
	for i := range 20 {
		propose(t, a, AddSnapshot{Volume: "v", Snapshot: Snapshot{Name: "s" + strconv.Itoa(i), ID: "id" + strconv.Itoa(i), Created: t0}})
	}
	if err := a.c.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	tc.admit(a, RoleData, "b")
	s := tc.converged("a", "b")
	if len(s.Volumes["v"].Snapshots) != 20 {
		t.Errorf("%d snapshots, want 20", len(s.Volumes["v"].Snapshots))
	}
	b := tc.nodes["b"]
	b.c.fsm.mu.RLock()
	restores := b.c.fsm.restores
	b.c.fsm.mu.RUnlock()
	if restores == 0 {
		t.Error("the new node caught up without installing the snapshot")
	}
	if st := b.c.Stats(); st["last_snapshot_index"] == "0" || st["catalog_volumes"] != "1" {
		t.Errorf("stats of b: %v", st)
	}
}

// TestAdmitAndRemove: six nodes (one a witness) give five voters, the
// witness among them, and a non-voter; a sixth voter cannot be a witness;
// Admit and Remove run on the leader only; Remove refuses the leader and
// a primary, and a removed voter's place goes to the non-voter.
func TestAdmitAndRemove(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrapData("a")
	tc.admit(a, RoleWitness, "w")
	tc.admit(a, RoleData, "b", "c", "d", "e")
	srv := servers(t, a)
	if v, nv := countVoters(srv); v != 5 || nv != 1 {
		t.Fatalf("%d voters, %d non-voters; want 5 and 1: %v", v, nv, srv)
	}
	if srv["w"].Suffrage != Voter || srv["e"].Suffrage != Nonvoter {
		t.Errorf("witness w is a %s, e a %s", srv["w"].Suffrage, srv["e"].Suffrage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.c.Admit(ctx, Node{Name: "x", Role: RoleWitness, Link: addrOf("x")}); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "witness must be a voter") {
		t.Errorf("sixth voter as witness: %v, want ErrConflict", err)
	}
	if _, ok := a.c.State().Nodes["x"]; ok {
		t.Error("a refused witness was recorded")
	}
	// Admitting again is idempotent.
	if err := a.c.Admit(ctx, Node{Name: "e", Role: RoleData, Link: addrOf("e"), Portal: "10.0.0.e:3260"}); err != nil {
		t.Fatal(err)
	}
	if v, nv := countVoters(servers(t, a)); v != 5 || nv != 1 {
		t.Errorf("after admitting e again: %d voters, %d non-voters", v, nv)
	}
	all := []string{"a", "w", "b", "c", "d", "e"}
	s := tc.converged(all...)
	if s.Nodes["e"].Portal != "10.0.0.e:3260" || s.Nodes["w"].Role != RoleWitness {
		t.Errorf("nodes %+v", s.Nodes)
	}

	follower := tc.nodes["c"]
	if err := follower.c.Admit(ctx, Node{Name: "y", Role: RoleData, Link: addrOf("y")}); !errors.Is(err, ErrNotLeader) {
		t.Errorf("admit on a follower: %v, want ErrNotLeader", err)
	}
	if err := follower.c.Remove(ctx, "d"); !errors.Is(err, ErrNotLeader) {
		t.Errorf("remove on a follower: %v, want ErrNotLeader", err)
	}
	if err := a.c.Remove(ctx, "a"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "leader") {
		t.Errorf("remove the leader itself: %v, want ErrConflict", err)
	}
	if err := a.c.Remove(ctx, "zz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove an unknown node: %v, want ErrNotFound", err)
	}

	propose(t, a, volumeOn("v", 1, "b", "c"))
	if err := a.c.Remove(ctx, "b"); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "move the primary of volume v first") {
		t.Errorf("remove a primary: %v, want ErrConflict", err)
	}
	propose(t, a, SetCopyID{Volume: "v", Node: "c", CopyID: "v-c"})
	propose(t, a, MarkInSync{Volume: "v", Epoch: 1, By: "b", Node: "c", CopyID: "v-c"})
	propose(t, a, SetPrimary{Volume: "v", Epoch: 1, Node: "c"})
	if err := a.c.Remove(ctx, "b"); err != nil {
		t.Fatalf("remove b: %v", err)
	}
	srv = servers(t, a)
	if _, ok := srv["b"]; ok {
		t.Error("b is still in the raft configuration")
	}
	if v, nv := countVoters(srv); v != 5 || nv != 0 || srv["e"].Suffrage != Voter {
		t.Errorf("after removing voter b: %d voters, %d non-voters, e %s; want e promoted", v, nv, srv["e"].Suffrage)
	}
	s = tc.converged("a", "w", "c", "d", "e")
	if _, ok := s.Nodes["b"]; ok || !slices.Equal(s.Volumes["v"].Placement, []string{"c"}) || !slices.Equal(s.Volumes["v"].InSync, []string{"c"}) {
		t.Errorf("after removing b: nodes %v, volume %+v", s.NodeNames(), s.Volumes["v"])
	}
	// The promoted voter counts: the cluster still commits.
	propose(t, tc.nodes["e"], DeleteVolume{Name: "v"})
}

// TestSoleVoterAddressChange: a single node restarted with a new link
// address keeps its catalog, leads at the new address, and can admit
// another node.
func TestSoleVoterAddressChange(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrapData("a")
	propose(t, a, volumeOn("v", 1, "a"))
	before := a.c.State()
	tc.stop("a")

	moved := "10.9.9.9:7482"
	a = tc.startAt("a", moved, false)
	tc.leader("a")
	eventually(t, "the catalog at the new address", func() bool {
		s := a.c.State()
		return s.Index >= before.Index && mustJSON(t, s.Volumes) == mustJSON(t, before.Volumes)
	})
	if got := a.c.State().ClusterID; got != before.ClusterID {
		t.Errorf("cluster ID %s, want %s", got, before.ClusterID)
	}
	if srv := servers(t, a); srv["a"].Address != moved || srv["a"].Suffrage != Voter {
		t.Errorf("raft configuration after the move: %+v", srv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.c.Admit(ctx, Node{Name: "a", Role: RoleData, Link: moved}); err != nil {
		t.Fatal(err)
	}
	tc.admit(a, RoleData, "b")
	s := tc.converged("a", "b")
	if s.Nodes["a"].Link != moved || len(s.Volumes) != 1 {
		t.Errorf("after admitting b: nodes %+v volumes %v", s.Nodes, s.VolumeNames())
	}
	propose(t, tc.nodes["b"], ResizeVolume{Name: "v", Size: 2 << 30})
}

// TestOpenRefuses: bad configurations and a directory in use; a shortened
// heartbeat alone is a good configuration.
func TestOpenRefuses(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.start("a", true)
	if _, err := Open(Config{Name: "a2", Dir: a.c.cfg.Dir, Transport: tc.net.transport("10.0.0.z:1")}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second open of a directory: %v", err)
	}
	for i, cfg := range []Config{
		{Dir: t.TempDir(), Transport: tc.net.transport("10.0.0.y:1")},
		{Name: "n", Transport: tc.net.transport("10.0.0.y:1")},
		{Name: "n", Dir: t.TempDir()},
		{Name: "n", Dir: t.TempDir(), Transport: tc.net.transport("10.0.0.y:1"), HeartbeatTimeout: time.Second, LeaderLeaseTimeout: 2 * time.Second},
	} {
		if _, err := Open(cfg); err == nil {
			t.Errorf("#%d: Open accepted %+v", i, cfg)
		}
	}
	short := Config{Name: "n", Dir: t.TempDir(), Transport: tc.net.transport("10.0.0.x:1"), HeartbeatTimeout: 50 * time.Millisecond}
	if err := short.Validate(); err != nil {
		t.Errorf("a shortened heartbeat: %v", err)
	}
}

// TestClose: Close is idempotent, and a closed Cluster refuses proposals.
func TestClose(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrap("a")
	tc.stop("a")
	if err := a.c.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := a.c.Propose(ctx, Init{ClusterID: "x"}); !errors.Is(err, ErrClosed) {
		t.Errorf("propose after close: %v, want ErrClosed", err)
	}
	if err := a.c.ServeRPC(ctx, tc.net.listen("10.0.0.q:1")); !errors.Is(err, ErrClosed) {
		t.Errorf("serve after close: %v, want ErrClosed", err)
	}
}

// TestFollowerAddressChange: in a cluster of several voters, a node
// restarted at a new link address is followed once the leader admits it
// again with that address.
func TestFollowerAddressChange(t *testing.T) {
	tc := newTestCluster(t)
	a := tc.bootstrapData("a")
	tc.admit(a, RoleData, "b", "c")
	all := []string{"a", "b", "c"}
	propose(t, a, volumeOn("v1", 1, "a", "c"))
	tc.converged(all...)
	tc.stop("c")
	moved := "10.9.9.9:7482"
	tc.startAt("c", moved, false)
	leader := tc.leader("a", "b")
	propose(t, leader, volumeOn("v2", 2, "a"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := leader.c.Admit(ctx, Node{Name: "c", Role: RoleData, Link: moved}); err != nil {
		t.Fatal(err)
	}
	if srv := servers(t, leader); srv["c"].Address != moved || srv["c"].Suffrage != Voter {
		t.Errorf("c in the configuration: %+v", srv["c"])
	}
	s := tc.converged(all...)
	if s.Nodes["c"].Link != moved || len(s.Volumes) != 2 {
		t.Errorf("after the move: node c %+v, volumes %v", s.Nodes["c"], s.VolumeNames())
	}
	propose(t, tc.nodes["c"], DeleteVolume{Name: "v2"})
}
