package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func naa(b byte) [16]byte { return [16]byte{0x60, 0x01, 15: b} }

// baseState is the catalog the command tests start from:
//
//	nodes a, b, c, d (data), w (witness)
//	vol:   placement a b c, primary a, epoch 3, in sync a b, snapshots s1 s2
//	clone: clone of vol@s1, placement c b, primary c, epoch 1, in sync c
//	solo:  placement a, primary a, epoch 1, in sync a
//
// Every placed node has reported its copy ID: "<volume>-<node>".
func baseState() State {
	s := newState()
	s.ClusterID = "c1"
	s.Index = 100
	for i, n := range []string{"a", "b", "c", "d"} {
		s.Nodes[n] = Node{Name: n, Role: RoleData, Link: "10.0.0." + n + ":7482", Joined: t0, Port: uint16(i + 1)}
	}
	s.Nodes["w"] = Node{Name: "w", Role: RoleWitness, Link: "10.0.0.w:7482", Joined: t0, Port: 5}
	s.Volumes["vol"] = Volume{Name: "vol", ID: "id-vol", NAA: naa(1), Serial: "s-vol", Size: 1 << 30, Created: t0,
		Copies: 3, Placement: []string{"a", "b", "c"}, Primary: "a", Epoch: 3, InSync: []string{"a", "b"},
		CopyIDs:   map[string]string{"a": "vol-a", "b": "vol-b", "c": "vol-c"},
		Snapshots: []Snapshot{{Name: "s1", ID: "id-s1", Created: t0, Size: 1 << 30}, {Name: "s2", ID: "id-s2", Created: t0, Size: 1 << 30}}}
	s.Volumes["clone"] = Volume{Name: "clone", ID: "id-clone", NAA: naa(2), Size: 1 << 30, Created: t0,
		Copies: 2, Placement: []string{"c", "b"}, Primary: "c", Epoch: 1, InSync: []string{"c"},
		CopyIDs: map[string]string{"c": "clone-c", "b": "clone-b"},
		Source:  &CloneSource{Volume: "vol", Snapshot: "s1"}}
	s.Volumes["solo"] = Volume{Name: "solo", ID: "id-solo", NAA: naa(3), Size: 1 << 20, Created: t0,
		Copies: 1, Placement: []string{"a"}, Primary: "a", Epoch: 1, InSync: []string{"a"},
		CopyIDs: map[string]string{"a": "solo-a"}}
	return s
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	p, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(p)
}

// applyTo runs cmd through the encoder and the FSM, on a copy of s, and
// returns the new state and the command's error.
func applyTo(t testing.TB, s State, cmd Command) (State, error) {
	t.Helper()
	p, err := encodeCommand(cmd)
	if err != nil {
		t.Fatalf("encode %T: %v", cmd, err)
	}
	f := newFSM()
	f.state = s.Clone()
	res, ok := f.Apply(&raft.Log{Index: s.Index + 1, Type: raft.LogCommand, Data: p}).(applyResult)
	if !ok {
		t.Fatalf("Apply returned %T, want applyResult", res)
	}
	return f.State(), res.err
}

func TestCommands(t *testing.T) {
	vol := func(s State) Volume { return s.Volumes["vol"] }
	eq := func(t *testing.T, what string, got, want any) {
		t.Helper()
		if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
			t.Errorf("%s = %s, want %s", what, g, w)
		}
	}
	bigNode := Node{Name: "e", Role: RoleData, Link: "10.0.0.5:7482", Portal: "10.0.0.5:3260", Joined: t0}
	create := CreateVolume{Name: "v2", ID: "id-v2", NAA: naa(9), Serial: "s-v2", Size: 4096, Created: t0, Copies: 2, Placement: []string{"b", "c"}}
	with := func(c CreateVolume, f func(*CreateVolume)) CreateVolume { f(&c); return c }
	weird := func() State { // primary a out of sync, b the only in-sync copy
		s := baseState()
		v := s.Volumes["vol"]
		v.InSync = []string{"b"}
		s.Volumes["vol"] = v
		return s
	}
	allInSync := func() State { // a, b and c all in sync
		s := baseState()
		v := s.Volumes["vol"]
		v.InSync = []string{"a", "b", "c"}
		s.Volumes["vol"] = v
		return s
	}
	unset := func() State { s := baseState(); s.ClusterID = ""; return s }
	edit := func(name string, f func(v *Volume)) func() State {
		return func() State {
			s := baseState()
			v := s.Volumes[name]
			f(&v)
			s.Volumes[name] = v
			return s
		}
	}
	noIDs := edit("vol", func(v *Volume) { v.CopyIDs = nil }) // before any node reported
	pendingS3 := edit("vol", func(v *Volume) {
		v.Snapshots = append(v.Snapshots, Snapshot{Name: "s3", ID: "id-s3", Created: t0, Size: 1 << 30, Pending: true})
	})
	committed, err := applyTo(t, pendingS3(), CommitSnapshot{Volume: "vol", Name: "s3"})
	if err != nil {
		t.Fatal(err)
	}
	committedS3 := func() State { return committed.Clone() }
	pendingOp := edit("vol", func(v *Volume) { v.Pending = "revert:s1" })

	tests := []struct {
		name  string
		state func() State // nil: baseState
		cmd   Command
		err   error // nil: accepted
		msg   string
		check func(t *testing.T, s State)
	}{
		// Init
		{name: "init new", state: unset, cmd: Init{ClusterID: "c2"}, check: func(t *testing.T, s State) { eq(t, "cluster ID", s.ClusterID, "c2") }},
		{name: "init same again", cmd: Init{ClusterID: "c1"}},
		{name: "init other", cmd: Init{ClusterID: "c2"}, err: ErrExists},
		{name: "init empty", state: unset, cmd: Init{}, err: ErrInvalid},

		// PutNode
		{name: "put new node", cmd: PutNode{Node: bigNode}, check: func(t *testing.T, s State) { eq(t, "node e", s.Nodes["e"], bigNode) }},
		{name: "put new node with the next port", cmd: PutNode{Node: func() Node { n := bigNode; n.Port = 6; return n }()},
			check: func(t *testing.T, s State) {
				eq(t, "node e port", s.Nodes["e"].Port, uint16(6))
				eq(t, "next port", s.NextPort(), uint16(7))
			}},
		{name: "put new node with a port another has", cmd: PutNode{Node: Node{Name: "e", Role: RoleData, Link: "x:1", Port: 2}}, err: ErrConflict},
		{name: "put node keeps joined and port", cmd: PutNode{Node: Node{Name: "a", Role: RoleData, Link: "10.9.9.9:1", Joined: t0.Add(time.Hour), Port: 9}},
			check: func(t *testing.T, s State) {
				eq(t, "node a", s.Nodes["a"], Node{Name: "a", Role: RoleData, Link: "10.9.9.9:1", Joined: t0, Port: 1})
			}},
		{name: "put node of an older catalog gets its port", state: func() State {
			s := baseState()
			n := s.Nodes["c"]
			n.Port = 0
			s.Nodes["c"] = n
			s.PortsGiven = 7 // a removed node had 6 and 7
			return s
		}, cmd: PutNode{Node: Node{Name: "c", Role: RoleData, Link: "10.0.0.c:7482", Port: 8}}, check: func(t *testing.T, s State) {
			eq(t, "node c port", s.Nodes["c"].Port, uint16(8))
			eq(t, "next port", s.NextPort(), uint16(9))
		}},
		{name: "next port skips numbers of removed nodes", state: func() State { s := baseState(); s.PortsGiven = 9; return s },
			cmd: RemoveNode{Name: "d"}, check: func(t *testing.T, s State) { eq(t, "next port", s.NextPort(), uint16(10)) }},
		{name: "put node empty name", cmd: PutNode{Node: Node{Role: RoleData, Link: "x:1"}}, err: ErrInvalid},
		{name: "put node bad role", cmd: PutNode{Node: Node{Name: "e", Role: "boss", Link: "x:1"}}, err: ErrInvalid},
		{name: "put node no link", cmd: PutNode{Node: Node{Name: "e", Role: RoleData}}, err: ErrInvalid},
		{name: "put node bad portal", cmd: PutNode{Node: Node{Name: "e", Role: RoleData, Link: "x:1", Portal: "nope"}}, err: ErrInvalid},
		{name: "holder cannot become witness", cmd: PutNode{Node: Node{Name: "b", Role: RoleWitness, Link: "x:1"}}, err: ErrConflict, msg: "holds copies"},
		{name: "empty node can become witness", cmd: PutNode{Node: Node{Name: "d", Role: RoleWitness, Link: "x:1"}}},
		{name: "witness becomes data", cmd: PutNode{Node: Node{Name: "w", Role: RoleData, Link: "x:1"}}},

		// RemoveNode
		{name: "remove missing node", cmd: RemoveNode{Name: "zz"}, err: ErrNotFound},
		{name: "remove primary", cmd: RemoveNode{Name: "a"}, err: ErrConflict, msg: "move the primary of volume solo first"},
		{name: "remove replica", cmd: RemoveNode{Name: "b"}, check: func(t *testing.T, s State) {
			eq(t, "vol placement", vol(s).Placement, []string{"a", "c"})
			eq(t, "vol in sync", vol(s).InSync, []string{"a"})
			eq(t, "clone placement", s.Volumes["clone"].Placement, []string{"c"})
			eq(t, "vol copy IDs", vol(s).CopyIDs, map[string]string{"a": "vol-a", "c": "vol-c"})
			eq(t, "clone copy IDs", s.Volumes["clone"].CopyIDs, map[string]string{"c": "clone-c"})
			if _, ok := s.Nodes["b"]; ok {
				t.Error("node b still there")
			}
		}},
		{name: "remove witness", cmd: RemoveNode{Name: "w"}, check: func(t *testing.T, s State) { eq(t, "nodes", s.NodeNames(), []string{"a", "b", "c", "d"}) }},

		// CreateVolume
		{name: "create", cmd: create, check: func(t *testing.T, s State) {
			eq(t, "v2", s.Volumes["v2"], Volume{Name: "v2", ID: "id-v2", NAA: naa(9), Serial: "s-v2", Size: 4096, Created: t0,
				Copies: 2, Placement: []string{"b", "c"}, Primary: "b", Epoch: 1, InSync: []string{"b"}})
		}},
		{name: "create clone", cmd: with(create, func(c *CreateVolume) { c.Size = 1 << 30; c.Source = &CloneSource{Volume: "vol", Snapshot: "s2"} }),
			check: func(t *testing.T, s State) {
				eq(t, "source", s.Volumes["v2"].Source, &CloneSource{Volume: "vol", Snapshot: "s2"})
			}},
		{name: "create same name", cmd: with(create, func(c *CreateVolume) { c.Name = "vol" }), err: ErrExists},
		{name: "create same ID", cmd: with(create, func(c *CreateVolume) { c.ID = "id-solo" }), err: ErrExists},
		{name: "create same NAA", cmd: with(create, func(c *CreateVolume) { c.NAA = naa(2) }), err: ErrExists},
		{name: "create zero NAA", cmd: with(create, func(c *CreateVolume) { c.NAA = [16]byte{} }), err: ErrInvalid},
		{name: "create empty name", cmd: with(create, func(c *CreateVolume) { c.Name = "" }), err: ErrInvalid},
		{name: "create empty ID", cmd: with(create, func(c *CreateVolume) { c.ID = "" }), err: ErrInvalid},
		{name: "create size 0", cmd: with(create, func(c *CreateVolume) { c.Size = 0 }), err: ErrInvalid},
		{name: "create 0 copies", cmd: with(create, func(c *CreateVolume) { c.Copies = 0 }), err: ErrInvalid},
		{name: "create no placement", cmd: with(create, func(c *CreateVolume) { c.Placement = nil }), err: ErrInvalid},
		{name: "create placed twice", cmd: with(create, func(c *CreateVolume) { c.Placement = []string{"b", "b"} }), err: ErrInvalid},
		{name: "create on unknown node", cmd: with(create, func(c *CreateVolume) { c.Placement = []string{"b", "zz"} }), err: ErrNotFound},
		{name: "create on witness", cmd: with(create, func(c *CreateVolume) { c.Placement = []string{"w"} }), err: ErrConflict},
		{name: "clone of missing snapshot", cmd: with(create, func(c *CreateVolume) { c.Source = &CloneSource{Volume: "vol", Snapshot: "s9"} }), err: ErrNotFound},
		{name: "clone of missing volume", cmd: with(create, func(c *CreateVolume) { c.Source = &CloneSource{Volume: "v9", Snapshot: "s1"} }), err: ErrNotFound},
		{name: "clone of a pending snapshot", state: pendingS3, cmd: with(create, func(c *CreateVolume) { c.Size = 1 << 30; c.Source = &CloneSource{Volume: "vol", Snapshot: "s3"} }),
			err: ErrConflict, msg: "snapshot s3 is not complete yet"},
		{name: "clone smaller than snapshot", cmd: with(create, func(c *CreateVolume) { c.Source = &CloneSource{Volume: "vol", Snapshot: "s1"} }), err: ErrInvalid},

		// DeleteVolume
		{name: "delete missing", cmd: DeleteVolume{Name: "v9"}, err: ErrNotFound},
		{name: "delete with clones", cmd: DeleteVolume{Name: "vol"}, err: ErrConflict, msg: "clone"},
		{name: "delete clone", cmd: DeleteVolume{Name: "clone"}, check: func(t *testing.T, s State) { eq(t, "volumes", s.VolumeNames(), []string{"solo", "vol"}) }},

		// ResizeVolume, SetExport, SetCopies
		{name: "grow", cmd: ResizeVolume{Name: "solo", Size: 2 << 20}, check: func(t *testing.T, s State) { eq(t, "size", s.Volumes["solo"].Size, 2<<20) }},
		{name: "same size", cmd: ResizeVolume{Name: "solo", Size: 1 << 20}},
		{name: "shrink", cmd: ResizeVolume{Name: "solo", Size: 1 << 19}, err: ErrConflict, msg: "only grow"},
		{name: "resize missing", cmd: ResizeVolume{Name: "v9", Size: 1}, err: ErrNotFound},
		{name: "set export", cmd: SetExport{Volume: "solo", Export: Export{CHAPUser: "u", CHAPSecret: "0123456789ab", Allow: []string{"iqn.x"}}},
			check: func(t *testing.T, s State) {
				eq(t, "export", s.Volumes["solo"].Export, Export{CHAPUser: "u", CHAPSecret: "0123456789ab", Allow: []string{"iqn.x"}})
			}},
		{name: "set export missing", cmd: SetExport{Volume: "v9"}, err: ErrNotFound},
		{name: "set copies", cmd: SetCopies{Volume: "vol", Copies: 2}, check: func(t *testing.T, s State) { eq(t, "copies", vol(s).Copies, 2) }},
		{name: "set 0 copies", cmd: SetCopies{Volume: "vol"}, err: ErrInvalid},

		// Snapshots
		{name: "add snapshot", cmd: AddSnapshot{Volume: "vol", Snapshot: Snapshot{Name: "s3", ID: "id-s3", Created: t0, Size: 1 << 30}},
			check: func(t *testing.T, s State) {
				eq(t, "last snapshot", vol(s).Snapshots[len(vol(s).Snapshots)-1].Name, "s3")
				eq(t, "snapshots", len(vol(s).Snapshots), 3)
			}},
		{name: "add pending snapshot", cmd: AddSnapshot{Volume: "vol", Snapshot: Snapshot{Name: "s3", ID: "id-s3", Created: t0, Size: 1 << 30, Pending: true}},
			check: func(t *testing.T, s State) {
				sn, _ := vol(s).Snapshot("s3")
				eq(t, "s3", sn, Snapshot{Name: "s3", ID: "id-s3", Created: t0, Size: 1 << 30, Pending: true})
			}},
		{name: "add snapshot same name", cmd: AddSnapshot{Volume: "vol", Snapshot: Snapshot{Name: "s1", ID: "id-s3"}}, err: ErrExists},
		{name: "add snapshot same ID", cmd: AddSnapshot{Volume: "vol", Snapshot: Snapshot{Name: "s3", ID: "id-s2"}}, err: ErrExists},
		{name: "add snapshot no name", cmd: AddSnapshot{Volume: "vol", Snapshot: Snapshot{ID: "id-s3"}}, err: ErrInvalid},
		{name: "add snapshot missing volume", cmd: AddSnapshot{Volume: "v9", Snapshot: Snapshot{Name: "s", ID: "i"}}, err: ErrNotFound},
		{name: "delete snapshot", cmd: DeleteSnapshot{Volume: "vol", Name: "s2"}, check: func(t *testing.T, s State) {
			eq(t, "snapshots", vol(s).Snapshots, []Snapshot{{Name: "s1", ID: "id-s1", Created: t0, Size: 1 << 30}})
		}},
		{name: "delete snapshot of a clone", cmd: DeleteSnapshot{Volume: "vol", Name: "s1"}, err: ErrConflict, msg: "clone"},
		{name: "delete missing snapshot", cmd: DeleteSnapshot{Volume: "vol", Name: "s9"}, err: ErrNotFound},
		{name: "delete pending snapshot", state: pendingS3, cmd: DeleteSnapshot{Volume: "vol", Name: "s3"}, check: func(t *testing.T, s State) {
			eq(t, "snapshots", vol(s).Snapshots, baseState().Volumes["vol"].Snapshots)
		}},
		{name: "commit snapshot", state: pendingS3, cmd: CommitSnapshot{Volume: "vol", Name: "s3"}, check: func(t *testing.T, s State) {
			eq(t, "snapshots", vol(s).Snapshots, append(baseState().Volumes["vol"].Snapshots, Snapshot{Name: "s3", ID: "id-s3", Created: t0, Size: 1 << 30}))
		}},
		{name: "commit snapshot again", cmd: CommitSnapshot{Volume: "vol", Name: "s1"}, check: func(t *testing.T, s State) {
			eq(t, "snapshots", vol(s).Snapshots, baseState().Volumes["vol"].Snapshots)
		}},
		{name: "commit missing snapshot", cmd: CommitSnapshot{Volume: "vol", Name: "s9"}, err: ErrNotFound},
		{name: "commit snapshot missing volume", cmd: CommitSnapshot{Volume: "v9", Name: "s1"}, err: ErrNotFound},
		{name: "clone of a committed snapshot", state: committedS3, cmd: with(create, func(c *CreateVolume) { c.Size = 1 << 30; c.Source = &CloneSource{Volume: "vol", Snapshot: "s3"} })},

		// DropReplica
		{name: "drop replica", cmd: DropReplica{Volume: "vol", Epoch: 3, By: "a", Node: "b"}, check: func(t *testing.T, s State) {
			eq(t, "in sync", vol(s).InSync, []string{"a"})
			eq(t, "placement", vol(s).Placement, []string{"a", "b", "c"})
		}},
		{name: "drop replica stale epoch", cmd: DropReplica{Volume: "vol", Epoch: 2, By: "a", Node: "b"}, err: ErrStaleEpoch},
		{name: "drop replica future epoch", cmd: DropReplica{Volume: "vol", Epoch: 4, By: "a", Node: "b"}, err: ErrStaleEpoch},
		{name: "drop replica by a replica", cmd: DropReplica{Volume: "vol", Epoch: 3, By: "b", Node: "b"}, err: ErrNotPrimary},
		{name: "drop replica by a stranger", cmd: DropReplica{Volume: "vol", Epoch: 3, By: "c", Node: "b"}, err: ErrNotPrimary},
		{name: "drop the primary", cmd: DropReplica{Volume: "vol", Epoch: 3, By: "a", Node: "a"}, err: ErrConflict},
		{name: "drop replica not in sync", cmd: DropReplica{Volume: "vol", Epoch: 3, By: "a", Node: "c"}},
		{name: "drop replica missing volume", cmd: DropReplica{Volume: "v9", Epoch: 3, By: "a", Node: "c"}, err: ErrNotFound},

		// MarkInSync
		{name: "mark in sync", cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "c", CopyID: "vol-c"}, check: func(t *testing.T, s State) {
			eq(t, "in sync", vol(s).InSync, []string{"a", "b", "c"})
		}},
		{name: "mark in sync stale epoch", cmd: MarkInSync{Volume: "vol", Epoch: 2, By: "a", Node: "c", CopyID: "vol-c"}, err: ErrStaleEpoch},
		{name: "mark in sync by a replica", cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "b", Node: "c", CopyID: "vol-c"}, err: ErrNotPrimary},
		{name: "mark in sync without a copy", cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "d", CopyID: "vol-c"}, err: ErrConflict, msg: "no copy"},
		{name: "mark the primary in sync", cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "a", CopyID: "vol-a"}, err: ErrConflict},
		{name: "mark in sync again", cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "b", CopyID: "vol-b"}},
		{name: "mark in sync wrong copy", cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "c", CopyID: "vol-c-old"}, err: ErrConflict,
			msg: `copy "vol-c-old", the catalog knows "vol-c"`},
		{name: "mark in sync no copy ID given", cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "c"}, err: ErrConflict},
		{name: "mark in sync no copy ID known", state: noIDs, cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "c", CopyID: "vol-c"}, err: ErrConflict,
			msg: `the catalog knows ""`},
		{name: "mark in sync neither knows a copy ID", state: noIDs, cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "c"}, err: ErrConflict},
		{name: "mark in sync again wrong copy", cmd: MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "b", CopyID: "x"}, err: ErrConflict},

		// SetCopyID
		{name: "first copy ID keeps in sync", state: noIDs, cmd: SetCopyID{Volume: "vol", Node: "b", CopyID: "b1"}, check: func(t *testing.T, s State) {
			eq(t, "copy IDs", vol(s).CopyIDs, map[string]string{"b": "b1"})
			eq(t, "in sync", vol(s).InSync, []string{"a", "b"})
		}},
		{name: "first copy ID of the primary", state: noIDs, cmd: SetCopyID{Volume: "vol", Node: "a", CopyID: "a1"}, check: func(t *testing.T, s State) {
			eq(t, "copy IDs", vol(s).CopyIDs, map[string]string{"a": "a1"})
			eq(t, "in sync", vol(s).InSync, []string{"a", "b"})
		}},
		{name: "same copy ID", cmd: SetCopyID{Volume: "vol", Node: "b", CopyID: "vol-b"}, check: func(t *testing.T, s State) {
			eq(t, "vol", vol(s), baseState().Volumes["vol"])
		}},
		{name: "replaced copy leaves in sync", cmd: SetCopyID{Volume: "vol", Node: "b", CopyID: "vol-b2"}, check: func(t *testing.T, s State) {
			eq(t, "copy IDs", vol(s).CopyIDs, map[string]string{"a": "vol-a", "b": "vol-b2", "c": "vol-c"})
			eq(t, "in sync", vol(s).InSync, []string{"a"})
			eq(t, "placement", vol(s).Placement, []string{"a", "b", "c"})
		}},
		{name: "replaced building copy", cmd: SetCopyID{Volume: "vol", Node: "c", CopyID: "vol-c2"}, check: func(t *testing.T, s State) {
			eq(t, "copy IDs", vol(s).CopyIDs, map[string]string{"a": "vol-a", "b": "vol-b", "c": "vol-c2"})
			eq(t, "in sync", vol(s).InSync, []string{"a", "b"})
		}},
		{name: "replaced copy of the primary: another in-sync copy takes over", cmd: SetCopyID{Volume: "vol", Node: "a", CopyID: "vol-a2"}, check: func(t *testing.T, s State) {
			eq(t, "primary", vol(s).Primary, "b")
			eq(t, "epoch", vol(s).Epoch, uint64(4))
			eq(t, "in sync", vol(s).InSync, []string{"b"})
			eq(t, "placement", vol(s).Placement, []string{"b", "a", "c"})
			eq(t, "copy IDs", vol(s).CopyIDs, map[string]string{"a": "vol-a2", "b": "vol-b", "c": "vol-c"})
		}},
		{name: "replaced copy of the primary, no other in sync", cmd: SetCopyID{Volume: "solo", Node: "a", CopyID: "solo-a2"}, err: ErrConflict,
			msg: "no other copy is in sync to take over"},
		{name: "copy ID of an unplaced node", cmd: SetCopyID{Volume: "vol", Node: "d", CopyID: "x"}, err: ErrNotFound},
		{name: "empty copy ID", cmd: SetCopyID{Volume: "vol", Node: "b"}, err: ErrInvalid},
		{name: "copy ID missing volume", cmd: SetCopyID{Volume: "v9", Node: "a", CopyID: "x"}, err: ErrNotFound},

		// LeaveInSync
		{name: "leave in sync", cmd: LeaveInSync{Volume: "vol", Node: "b", Epoch: 3}, check: func(t *testing.T, s State) {
			eq(t, "in sync", vol(s).InSync, []string{"a"})
			eq(t, "placement", vol(s).Placement, []string{"a", "b", "c"})
			eq(t, "copy IDs", vol(s).CopyIDs, baseState().Volumes["vol"].CopyIDs)
		}},
		{name: "leave in sync newer epoch", cmd: LeaveInSync{Volume: "vol", Node: "b", Epoch: 4}, check: func(t *testing.T, s State) {
			eq(t, "in sync", vol(s).InSync, []string{"a"})
		}},
		{name: "leave in sync stale epoch", cmd: LeaveInSync{Volume: "vol", Node: "b", Epoch: 2}, err: ErrStaleEpoch},
		{name: "primary leaves in sync", cmd: LeaveInSync{Volume: "vol", Node: "a", Epoch: 3}, err: ErrConflict, msg: "primary"},
		{name: "leave in sync not in it", cmd: LeaveInSync{Volume: "vol", Node: "c", Epoch: 3}},
		{name: "leave in sync no copy", cmd: LeaveInSync{Volume: "vol", Node: "d", Epoch: 3}},
		{name: "leave in sync empty node", cmd: LeaveInSync{Volume: "vol", Epoch: 3}, err: ErrInvalid},
		{name: "leave in sync missing volume", cmd: LeaveInSync{Volume: "v9", Node: "b", Epoch: 3}, err: ErrNotFound},

		// SetPending
		{name: "set pending", cmd: SetPending{Volume: "vol", Epoch: 3, By: "a", Op: "revert:s1"}, check: func(t *testing.T, s State) {
			eq(t, "pending", vol(s).Pending, "revert:s1")
		}},
		{name: "set pending again", state: pendingOp, cmd: SetPending{Volume: "vol", Epoch: 3, By: "a", Op: "revert:s1"}, check: func(t *testing.T, s State) {
			eq(t, "pending", vol(s).Pending, "revert:s1")
		}},
		{name: "set pending over another", state: pendingOp, cmd: SetPending{Volume: "vol", Epoch: 3, By: "a", Op: "revert:s2"}, err: ErrConflict,
			msg: `"revert:s1" is pending`},
		{name: "clear pending", state: pendingOp, cmd: SetPending{Volume: "vol", Epoch: 3, By: "a"}, check: func(t *testing.T, s State) {
			eq(t, "vol", vol(s), baseState().Volumes["vol"])
		}},
		{name: "clear pending when none", cmd: SetPending{Volume: "vol", Epoch: 3, By: "a"}},
		{name: "set pending stale epoch", cmd: SetPending{Volume: "vol", Epoch: 2, By: "a", Op: "revert:s1"}, err: ErrStaleEpoch},
		{name: "clear pending stale epoch", state: pendingOp, cmd: SetPending{Volume: "vol", Epoch: 2, By: "a"}, err: ErrStaleEpoch},
		{name: "set pending by a replica", cmd: SetPending{Volume: "vol", Epoch: 3, By: "b", Op: "revert:s1"}, err: ErrNotPrimary},
		{name: "clear pending by a replica", state: pendingOp, cmd: SetPending{Volume: "vol", Epoch: 3, By: "b"}, err: ErrNotPrimary},
		{name: "set pending too long", cmd: SetPending{Volume: "vol", Epoch: 3, By: "a", Op: strings.Repeat("x", maxPendingOp+1)}, err: ErrInvalid},
		{name: "set pending missing volume", cmd: SetPending{Volume: "v9", Epoch: 3, By: "a", Op: "x"}, err: ErrNotFound},

		// AddCopy, RemoveCopy
		{name: "add copy", cmd: AddCopy{Volume: "solo", Node: "d"}, check: func(t *testing.T, s State) {
			eq(t, "placement", s.Volumes["solo"].Placement, []string{"a", "d"})
			eq(t, "in sync", s.Volumes["solo"].InSync, []string{"a"})
			eq(t, "copy IDs", s.Volumes["solo"].CopyIDs, map[string]string{"a": "solo-a"})
		}},
		{name: "add copy with snapshots", cmd: AddCopy{Volume: "vol", Node: "d"}, err: ErrConflict,
			msg: "a new copy is built from the live data only: volume vol has snapshots"},
		{name: "add copy with a pending snapshot", state: edit("solo", func(v *Volume) { v.Snapshots = []Snapshot{{Name: "p", ID: "id-p", Pending: true}} }),
			cmd: AddCopy{Volume: "solo", Node: "d"}, err: ErrConflict, msg: "has snapshots"},
		{name: "add copy again", cmd: AddCopy{Volume: "vol", Node: "b"}},
		{name: "add copy on witness", cmd: AddCopy{Volume: "vol", Node: "w"}, err: ErrConflict},
		{name: "add copy on unknown node", cmd: AddCopy{Volume: "vol", Node: "zz"}, err: ErrNotFound},
		{name: "remove in-sync copy", cmd: RemoveCopy{Volume: "vol", Node: "b"}, check: func(t *testing.T, s State) {
			eq(t, "placement", vol(s).Placement, []string{"a", "c"})
			eq(t, "in sync", vol(s).InSync, []string{"a"})
			eq(t, "copy IDs", vol(s).CopyIDs, map[string]string{"a": "vol-a", "c": "vol-c"})
		}},
		{name: "remove building copy", cmd: RemoveCopy{Volume: "vol", Node: "c"}, check: func(t *testing.T, s State) {
			eq(t, "placement", vol(s).Placement, []string{"a", "b"})
			eq(t, "copy IDs", vol(s).CopyIDs, map[string]string{"a": "vol-a", "b": "vol-b"})
		}},
		{name: "remove copy without an ID", state: noIDs, cmd: RemoveCopy{Volume: "vol", Node: "c"}, check: func(t *testing.T, s State) {
			eq(t, "placement", vol(s).Placement, []string{"a", "b"})
			eq(t, "copy IDs", vol(s).CopyIDs, map[string]string(nil))
		}},
		{name: "remove absent copy", cmd: RemoveCopy{Volume: "vol", Node: "d"}},
		{name: "remove the primary's copy", cmd: RemoveCopy{Volume: "vol", Node: "a"}, err: ErrConflict, msg: "move the primary first"},
		{name: "remove the only copy", cmd: RemoveCopy{Volume: "solo", Node: "a"}, err: ErrConflict},
		{name: "remove the last in-sync copy", state: weird, cmd: RemoveCopy{Volume: "vol", Node: "b"}, err: ErrConflict, msg: "last in-sync copy"},

		// SetPrimary
		{name: "move primary", cmd: SetPrimary{Volume: "vol", Epoch: 3, Node: "b"}, check: func(t *testing.T, s State) {
			eq(t, "primary", vol(s).Primary, "b")
			eq(t, "epoch", vol(s).Epoch, 4)
			eq(t, "placement", vol(s).Placement, []string{"b", "a", "c"})
			eq(t, "in sync", vol(s).InSync, []string{"b", "a"})
		}},
		{name: "fail over", cmd: SetPrimary{Volume: "vol", Epoch: 3, Node: "b", Failover: true}, check: func(t *testing.T, s State) {
			eq(t, "primary", vol(s).Primary, "b")
			eq(t, "epoch", vol(s).Epoch, 4)
			eq(t, "in sync", vol(s).InSync, []string{"b"})
		}},
		{name: "fail over with three in sync", state: allInSync, cmd: SetPrimary{Volume: "vol", Epoch: 3, Node: "b", Failover: true}, check: func(t *testing.T, s State) {
			eq(t, "primary", vol(s).Primary, "b")
			eq(t, "in sync", vol(s).InSync, []string{"b"}) // c may hold a write b never had: rebuilt
		}},
		{name: "set primary stale epoch", cmd: SetPrimary{Volume: "vol", Epoch: 2, Node: "b"}, err: ErrStaleEpoch},
		{name: "set primary out of sync", cmd: SetPrimary{Volume: "vol", Epoch: 3, Node: "c"}, err: ErrConflict, msg: "not in sync"},
		{name: "set primary to a stranger", cmd: SetPrimary{Volume: "vol", Epoch: 3, Node: "d"}, err: ErrConflict},
		{name: "set primary to itself", cmd: SetPrimary{Volume: "vol", Epoch: 3, Node: "a"}, check: func(t *testing.T, s State) {
			eq(t, "epoch", vol(s).Epoch, 3)
		}},
		{name: "set primary missing volume", cmd: SetPrimary{Volume: "v9", Epoch: 1, Node: "a"}, err: ErrNotFound},

		// SetReservations
		{name: "set reservations", cmd: SetReservations{Volume: "vol", Epoch: 3, Data: []byte{1, 2, 3}}, check: func(t *testing.T, s State) {
			eq(t, "reservations", vol(s).Reservations, []byte{1, 2, 3})
		}},
		{name: "set reservations stale", cmd: SetReservations{Volume: "vol", Epoch: 2, Data: []byte{1}}, err: ErrStaleEpoch},
		{name: "set reservations too large", cmd: SetReservations{Volume: "vol", Epoch: 3, Data: make([]byte, maxReservations+1)}, err: ErrInvalid},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := baseState()
			if tc.state != nil {
				before = tc.state()
			}
			after, err := applyTo(t, before, tc.cmd)
			if after.Index != before.Index+1 {
				t.Errorf("#%d: index %d after applying at %d", i, after.Index, before.Index+1)
			}
			after.Index = before.Index
			if tc.err == nil {
				if err != nil {
					t.Fatalf("#%d %+v: %v", i, tc.cmd, err)
				}
			} else {
				if !errors.Is(err, tc.err) {
					t.Fatalf("#%d %+v: error %v, want %v", i, tc.cmd, err, tc.err)
				}
				if !strings.Contains(err.Error(), tc.msg) {
					t.Errorf("#%d: error %q does not say %q", i, err, tc.msg)
				}
				if mustJSON(t, after) != mustJSON(t, before) {
					t.Errorf("#%d: a refused command changed the state:\n%s\nwant\n%s", i, mustJSON(t, after), mustJSON(t, before))
				}
			}
			if tc.check != nil {
				tc.check(t, after)
			}
		})
	}
}

// TestSetPrimaryBumpsEpoch moves the primary back and forth: each move
// needs the current epoch and bumps it; the previous epoch is refused for
// every requester-checked command.
func TestSetPrimaryBumpsEpoch(t *testing.T) {
	s := baseState()
	var err error
	for i, to := range []string{"b", "a", "b"} {
		epoch, from := s.Volumes["vol"].Epoch, s.Volumes["vol"].Primary
		if s, err = applyTo(t, s, SetPrimary{Volume: "vol", Epoch: epoch, Node: to}); err != nil {
			t.Fatalf("#%d: move to %s: %v", i, to, err)
		}
		v := s.Volumes["vol"]
		if v.Primary != to || v.Epoch != epoch+1 || v.Placement[0] != to {
			t.Fatalf("#%d: after moving to %s: primary %s epoch %d placement %v", i, to, v.Primary, v.Epoch, v.Placement)
		}
		old := []Command{
			DropReplica{Volume: "vol", Epoch: epoch, By: to, Node: "c"},
			MarkInSync{Volume: "vol", Epoch: epoch, By: to, Node: "c", CopyID: "vol-c"},
			SetPrimary{Volume: "vol", Epoch: epoch, Node: "a"},
			SetReservations{Volume: "vol", Epoch: epoch},
			SetPending{Volume: "vol", Epoch: epoch, By: to, Op: "revert:s1"},
			LeaveInSync{Volume: "vol", Node: from, Epoch: epoch},
		}
		for _, cmd := range old {
			if _, err := applyTo(t, s, cmd); !errors.Is(err, ErrStaleEpoch) {
				t.Errorf("#%d: %+v at the old epoch: %v, want ErrStaleEpoch", i, cmd, err)
			}
		}
	}
	if got := s.Volumes["vol"].Epoch; got != 6 {
		t.Errorf("epoch %d after three moves from 3", got)
	}
}

// TestCreateVolumeFirstEpoch: a new volume's first primary has epoch 1.
func TestCreateVolumeFirstEpoch(t *testing.T) {
	s, err := applyTo(t, baseState(), CreateVolume{Name: "n", ID: "i", NAA: naa(7), Size: 1, Copies: 2, Placement: []string{"d", "a"}})
	if err != nil {
		t.Fatal(err)
	}
	v := s.Volumes["n"]
	if v.Primary != "d" || v.Epoch != 1 || !slices.Equal(v.InSync, []string{"d"}) {
		t.Errorf("new volume: primary %s epoch %d in sync %v", v.Primary, v.Epoch, v.InSync)
	}
}

// TestCloneIsDeep: changing a clone's maps and slices leaves the original
// as it was.
func TestCloneIsDeep(t *testing.T) {
	s := baseState()
	v := s.Volumes["vol"]
	v.Pending = "revert:s1"
	s.Volumes["vol"] = v
	want := mustJSON(t, s)
	c := s.Clone()
	cv := c.Volumes["vol"]
	cv.CopyIDs["a"] = "changed"
	cv.InSync[0] = "changed"
	cv.Placement[0] = "changed"
	cv.Snapshots[0].Pending = true
	cv.Source = &CloneSource{}
	c.Volumes["clone"].Source.Volume = "changed"
	c.Volumes["vol"] = cv
	if got := mustJSON(t, s); got != want {
		t.Errorf("changing the clone changed the original:\n%s\nwant\n%s", got, want)
	}
	if c2 := s.Clone(); mustJSON(t, c2) != want {
		t.Errorf("clone differs from the original")
	}
}

// allCommands is one of each command, for codec tests and fuzz seeds.
func allCommands() []Command {
	return []Command{
		Init{ClusterID: "c1"},
		PutNode{Node: Node{Name: "e", Role: RoleData, Gossip: "h:1", Link: "h:2", Portal: "h:3", API: "h:4", Joined: t0}},
		RemoveNode{Name: "b"},
		CreateVolume{Name: "v2", ID: "i", NAA: naa(9), Serial: "s", Size: 4096, Created: t0, Copies: 2,
			Placement: []string{"b", "c"}, Export: Export{CHAPUser: "u", Allow: []string{"iqn.a"}}, Source: &CloneSource{Volume: "vol", Snapshot: "s1"}},
		DeleteVolume{Name: "solo"},
		ResizeVolume{Name: "solo", Size: 1 << 21},
		SetExport{Volume: "vol", Export: Export{MutualUser: "m", MutualSecret: "x"}},
		SetCopies{Volume: "vol", Copies: 2},
		AddSnapshot{Volume: "vol", Snapshot: Snapshot{Name: "s3", ID: "i3", Created: t0, Size: 1}},
		DeleteSnapshot{Volume: "vol", Name: "s2"},
		DropReplica{Volume: "vol", Epoch: 3, By: "a", Node: "b"},
		MarkInSync{Volume: "vol", Epoch: 3, By: "a", Node: "c", CopyID: "vol-c"},
		AddCopy{Volume: "solo", Node: "d"},
		RemoveCopy{Volume: "vol", Node: "c"},
		SetPrimary{Volume: "vol", Epoch: 3, Node: "b", Failover: true},
		SetReservations{Volume: "vol", Epoch: 3, Data: []byte("pr")},
		CommitSnapshot{Volume: "vol", Name: "s1"},
		LeaveInSync{Volume: "vol", Node: "b", Epoch: 3},
		SetCopyID{Volume: "vol", Node: "b", CopyID: "vol-b2"},
		SetPending{Volume: "vol", Epoch: 3, By: "a", Op: "revert:s1"},
		ImportVolume{Volume: Volume{Name: "old", ID: "id-old", NAA: naa(7), Size: 1 << 20, Copies: 1, Placement: []string{"d"},
			Primary: "d", Epoch: 1, InSync: []string{"d"}, CopyIDs: map[string]string{"d": "old-d"}, Pending: "revert:s"}},
		Noop{},
		LeaseProof{Nodes: []string{"a", "b"}},
	}
}

func TestCommandCodecRoundTrip(t *testing.T) {
	for i, cmd := range allCommands() {
		p, err := encodeCommand(cmd)
		if err != nil {
			t.Fatalf("#%d encode %T: %v", i, cmd, err)
		}
		got, err := decodeCommand(p)
		if err != nil {
			t.Fatalf("#%d decode %s: %v", i, p, err)
		}
		if mustJSON(t, got) != mustJSON(t, cmd) || got.kind() != cmd.kind() {
			t.Errorf("#%d: %T round trip gave %T %s", i, cmd, got, mustJSON(t, got))
		}
	}
}

func TestDecodeCommandRefuses(t *testing.T) {
	tests := []struct {
		in  string
		err error
	}{
		{``, ErrInvalid},
		{`nope`, ErrInvalid},
		{`[]`, ErrInvalid},
		{`{"v":1,"kind":"init","cmd":{"cluster_id":"x"}} trailing`, ErrInvalid},
		{`{"v":2,"kind":"init","cmd":{"cluster_id":"x"}}`, ErrUnsupported},
		{`{"v":1,"kind":"conquer","cmd":{}}`, ErrUnsupported},
		{`{"v":1,"kind":"init","cmd":{"cluster_id":"x","extra":1}}`, ErrInvalid},
		{`{"v":1,"kind":"init","cmd":{"cluster_id":7}}`, ErrInvalid},
		{`{"v":1,"kind":"init","cmd":{"cluster_id":"x"},"more":1}`, ErrInvalid},
		{`{"v":1,"kind":"create-volume","cmd":{"naa":"x"}}`, ErrInvalid},
	}
	for i, tc := range tests {
		if _, err := decodeCommand([]byte(tc.in)); !errors.Is(err, tc.err) {
			t.Errorf("#%d %q: %v, want %v", i, tc.in, err, tc.err)
		}
	}
}

// TestApplyGarbage: an entry that is no command changes nothing but the
// index, and says why.
func TestApplyGarbage(t *testing.T) {
	f := newFSM()
	f.state = baseState()
	res := f.Apply(&raft.Log{Index: 101, Data: []byte("\x00garbage")}).(applyResult)
	if !errors.Is(res.err, ErrInvalid) {
		t.Errorf("garbage applied: %v", res.err)
	}
	want := baseState()
	want.Index = 101
	if mustJSON(t, f.State()) != mustJSON(t, want) {
		t.Errorf("garbage changed the state")
	}
}

func TestEncodeCommandTooLarge(t *testing.T) {
	_, err := encodeCommand(RemoveNode{Name: strings.Repeat("x", maxCommand)})
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized command: %v", err)
	}
	if _, err := encodeCommand(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil command: %v", err)
	}
}

// FuzzDecodeCommand: decoding never panics; whatever decodes re-encodes to
// the same command, and applying it to a populated catalog either works or
// leaves the catalog as it was.
func FuzzDecodeCommand(f *testing.F) {
	for _, cmd := range allCommands() {
		p, err := encodeCommand(cmd)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add([]byte(`{"v":1,"kind":"create-volume","cmd":{"name":"x","id":"y","naa":[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"size":1,"copies":1,"placement":["a","a"]}}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		cmd, err := decodeCommand(p)
		if err != nil {
			return
		}
		again, err := encodeCommand(cmd)
		if err != nil {
			return // too large to re-encode with the envelope
		}
		cmd2, err := decodeCommand(again)
		if err != nil || mustJSON(t, cmd2) != mustJSON(t, cmd) {
			t.Fatalf("re-encoded %s does not decode to the same command: %v", again, err)
		}
		before := baseState()
		after, err := applyTo(t, before, cmd)
		after.Index = before.Index
		if err != nil && mustJSON(t, after) != mustJSON(t, before) {
			t.Fatalf("refused %s changed the state: %v", p, err)
		}
		if err == nil {
			checkInvariants(t, after)
		}
	})
}

// checkInvariants checks what every reachable catalog satisfies.
func checkInvariants(t *testing.T, s State) {
	t.Helper()
	for name, v := range s.Volumes {
		if v.Primary == "" || !v.Holds(v.Primary) || !v.IsInSync(v.Primary) || v.Placement[0] != v.Primary {
			t.Fatalf("volume %s: primary %q, placement %v, in sync %v", name, v.Primary, v.Placement, v.InSync)
		}
		for _, n := range v.InSync {
			if !v.Holds(n) {
				t.Fatalf("volume %s: %s in sync without a copy", name, n)
			}
		}
		for _, n := range v.Placement {
			if _, ok := s.Nodes[n]; !ok {
				t.Fatalf("volume %s placed on unknown node %s", name, n)
			}
		}
		if v.Epoch < 1 {
			t.Fatalf("volume %s: epoch %d", name, v.Epoch)
		}
		for n, id := range v.CopyIDs {
			if id == "" || !v.Holds(n) {
				t.Fatalf("volume %s: copy ID %q of %s, placement %v", name, id, n, v.Placement)
			}
		}
		if src := v.Source; src != nil {
			if sn, ok := s.Volumes[src.Volume].Snapshot(src.Snapshot); !ok || sn.Pending {
				t.Fatalf("volume %s: clone of %s@%s: found %v, %+v", name, src.Volume, src.Snapshot, ok, sn)
			}
		}
	}
}

// sink is a raft.SnapshotSink in memory.
type sink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Close() error  { s.closed = true; return nil }
func (s *sink) Cancel() error { s.cancelled = true; return nil }

func TestSnapshotRoundTrip(t *testing.T) {
	f := newFSM()
	f.state = baseState()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Changes after the snapshot do not reach it.
	f.Apply(&raft.Log{Index: 101, Data: mustEncode(t, DeleteVolume{Name: "solo"})})
	var out sink
	if err := snap.Persist(&out); err != nil || !out.closed {
		t.Fatalf("persist: %v (closed %v)", err, out.closed)
	}
	snap.Release()

	g := newFSM()
	if err := g.Restore(readCloser(out.Bytes())); err != nil {
		t.Fatal(err)
	}
	if got, want := mustJSON(t, g.State()), mustJSON(t, baseState()); got != want {
		t.Errorf("restored\n%s\nwant\n%s", got, want)
	}
	select {
	case <-g.changes:
	default:
		t.Error("restore sent no change notification")
	}
}

func mustEncode(t testing.TB, cmd Command) []byte {
	t.Helper()
	p, err := encodeCommand(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRestoreRefuses(t *testing.T) {
	good, err := encodeSnapshot(baseState())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		in  string
		err error
	}{
		{``, ErrInvalid},
		{`garbage`, ErrInvalid},
		{string(good[:len(good)/2]), ErrInvalid},
		{strings.Replace(string(good), `"v":1`, `"v":9`, 1), ErrUnsupported},
		{`{"v":1,"state":{"nodes":{"a":{"name":"b"}}}}`, ErrInvalid},
		{`{"v":1,"state":{"volumes":{"a":{"name":"b"}}}}`, ErrInvalid},
		{`{"v":1,"state":{"surprise":1}}`, ErrInvalid},
	}
	for i, tc := range tests {
		f := newFSM()
		f.state = baseState()
		if err := f.Restore(readCloser([]byte(tc.in))); !errors.Is(err, tc.err) {
			t.Errorf("#%d: restore %.40q: %v, want %v", i, tc.in, err, tc.err)
		}
		if mustJSON(t, f.State()) != mustJSON(t, baseState()) {
			t.Errorf("#%d: a refused restore changed the state", i)
		}
	}
}

// FuzzRestore: Restore never panics, and what it accepts encodes again.
func FuzzRestore(f *testing.F) {
	// A small seed: the fuzzer minimizes large interesting inputs slowly.
	small := newState()
	small.Nodes["a"] = Node{Name: "a", Role: RoleData, Link: "h:1", Joined: t0}
	small.Volumes["v"] = Volume{Name: "v", ID: "i", NAA: naa(1), Size: 1, Copies: 1, Placement: []string{"a"},
		Primary: "a", Epoch: 1, InSync: []string{"a"}, Snapshots: []Snapshot{{Name: "s", ID: "j"}}, Reservations: []byte{1}}
	good, err := encodeSnapshot(small)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"v":1,"state":{}}`))
	f.Add([]byte(`{"v":1,"state":{"nodes":null,"volumes":{"x":{"name":"x","source":{"volume":"y"}}}}}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		g := newFSM()
		if err := g.Restore(readCloser(p)); err != nil {
			return
		}
		s := g.State()
		if s.Nodes == nil || s.Volumes == nil {
			t.Fatal("restored state has nil maps")
		}
		if _, err := encodeSnapshot(s); err != nil {
			t.Fatal(err)
		}
	})
}

func readCloser(p []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(p)) }
