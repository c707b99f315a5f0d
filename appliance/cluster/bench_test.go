package cluster

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
)

// bigState is a catalog of n volumes on three nodes, each with snapshots.
func bigState(n int) State {
	s := baseState()
	for i := range n {
		name := fmt.Sprintf("v%05d", i)
		s.Volumes[name] = Volume{Name: name, ID: "id-" + name, NAA: [16]byte{0x60, byte(i >> 8), byte(i), 15: 0xff}, Size: 1 << 30,
			Copies: 2, Placement: []string{"a", "b"}, Primary: "a", Epoch: 1, InSync: []string{"a", "b"},
			CopyIDs: map[string]string{"a": name + "-a", "b": name + "-b"}, Snapshots: []Snapshot{{Name: "daily", ID: "s-" + name}}, Export: Export{Allow: []string{"iqn.1998-01.com.vmware:esx1"}}}
	}
	return s
}

// BenchmarkApply measures applying a replica change (decode, check,
// change) to a catalog of 1000 volumes: the cost on every node of each
// committed command.
func BenchmarkApply(b *testing.B) {
	f := newFSM()
	f.state = bigState(1000)
	drop := mustEncode(b, DropReplica{Volume: "v00500", Epoch: 1, By: "a", Node: "b"})
	mark := mustEncode(b, MarkInSync{Volume: "v00500", Epoch: 1, By: "a", Node: "b", CopyID: "v00500-b"})
	index := f.state.Index
	b.ReportAllocs()
	for b.Loop() {
		index++
		data := drop
		if index%2 == 0 {
			data = mark
		}
		if res := f.Apply(&raft.Log{Index: index, Data: data}).(applyResult); res.err != nil {
			b.Fatal(res.err)
		}
	}
}

// BenchmarkState measures State (a deep copy) of a catalog of 1000
// volumes, which readers call after every change.
func BenchmarkState(b *testing.B) {
	f := newFSM()
	f.state = bigState(1000)
	b.ReportAllocs()
	for b.Loop() {
		_ = f.State()
	}
}
