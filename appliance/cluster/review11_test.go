package cluster

import (
	"maps"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestReview11PortsDoNotDependOnWhereTheFSMStarted: every node's FSM
// must reach the same catalog from the same log. After an upgrade, a node
// that replays the log from its start (the new PutNode numbers each node
// as it is admitted) and a node that restores an older snapshot (ports all
// 0, numbered at Restore in join order) then applies the rest must agree
// on every node's port. They do not when a node was removed before the
// snapshot, or when Joined (the proposing leader's clock) is not in log
// order: the nodes then disagree on which port is whose, and two live
// nodes can serve the same target port number (same relative port and
// target port group), with different ALUA states.
func TestReview11PortsDoNotDependOnWhereTheFSMStarted(t *testing.T) {
	put := func(name string, joined time.Time) Command {
		return PutNode{Node: Node{Name: name, Role: RoleData, Link: "10.0.0.1:7482", Portal: "10.0.0.1:3260", Joined: joined}}
	}
	tests := []struct {
		name string
		// log is the whole log (after Init); snap is how many of its
		// entries an old (pre-port) snapshot holds.
		log  []Command
		snap int
	}{
		{"a node removed before the snapshot", []Command{
			put("a", t0), put("b", t0.Add(time.Minute)), put("c", t0.Add(2*time.Minute)), put("d", t0.Add(3*time.Minute)),
			RemoveNode{Name: "b"},
			put("e", t0.Add(4*time.Minute)),
		}, 5},
		{"joined times out of log order (leaders' clocks differ)", []Command{
			put("a", t0), put("b", t0.Add(time.Minute)), put("c", t0.Add(-time.Minute)),
			put("d", t0.Add(3*time.Minute)),
		}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			apply := func(f *fsm, index uint64, cmd Command) {
				p, err := encodeCommand(cmd)
				if err != nil {
					t.Fatal(err)
				}
				if res := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: p}).(applyResult); res.err != nil {
					t.Fatalf("%T: %v", cmd, res.err)
				}
			}
			log := append([]Command{Init{ClusterID: "c1"}}, tc.log...)

			// The node that replays the whole log.
			replayed := newFSM()
			for i, cmd := range log {
				apply(replayed, uint64(i+1), cmd)
			}

			// The node whose snapshot an older version wrote: the
			// catalog after the first snap entries, without ports.
			old := newFSM()
			for i, cmd := range log[:tc.snap+1] {
				apply(old, uint64(i+1), cmd)
			}
			st := old.State()
			for name, n := range st.Nodes {
				n.Port = 0
				st.Nodes[name] = n
			}
			p, err := encodeSnapshot(st)
			if err != nil {
				t.Fatal(err)
			}
			restored := newFSM()
			if err := restored.Restore(readCloser(p)); err != nil {
				t.Fatal(err)
			}
			for i := tc.snap + 1; i < len(log); i++ {
				apply(restored, uint64(i+1), log[i])
			}

			ports := func(f *fsm) map[string]uint16 {
				out := map[string]uint16{}
				for name, n := range f.State().Nodes {
					out[name] = n.Port
				}
				return out
			}
			if a, b := ports(replayed), ports(restored); !maps.Equal(a, b) {
				t.Errorf("the same log gives different port numbers: replayed from the start %v, from the old snapshot %v", a, b)
			}
		})
	}
}
