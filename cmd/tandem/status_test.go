package main

import (
	"strings"
	"testing"

	"tandem.io/tandem/appliance/admin"
)

func TestHeadroom(t *testing.T) {
	const gib = int64(1) << 30
	node := func(name string, free int64, vols ...string) admin.Node {
		return admin.Node{Name: name, Role: "data", State: "alive", FreeBytes: free, Volumes: vols}
	}
	vol := func(name string, alloc int64, on ...string) admin.Volume {
		v := admin.Volume{Name: name, AllocatedBytes: alloc, CopiesWanted: len(on)}
		for _, n := range on {
			v.Copies = append(v.Copies, admin.Copy{Node: n, State: "in-sync"})
		}
		return v
	}
	for _, tc := range []struct {
		name  string
		nodes []admin.Node
		vols  []admin.Volume
		want  []string
	}{
		{"room everywhere",
			[]admin.Node{node("n1", 10*gib, "a"), node("n2", 10*gib, "a"), node("n3", 10*gib)},
			[]admin.Volume{vol("a", 2*gib, "n1", "n2")},
			[]string{"N+1: yes", "worst: n1, 2.0 GiB to rebuild"}},
		{"the only other node holds a copy already",
			[]admin.Node{node("n1", 10*gib, "a"), node("n2", 10*gib, "a")},
			[]admin.Volume{vol("a", 2*gib, "n1", "n2")},
			[]string{"N+1: NO", "losing n1 loses or cannot rebuild: a (2.0 GiB: no other node", "losing n2 loses or cannot rebuild: a (2.0 GiB"}},
		{"no room for the second of two volumes",
			[]admin.Node{node("n1", 10*gib, "a", "b"), node("n2", 10*gib, "a", "b"), node("n3", 3*gib)},
			[]admin.Volume{vol("a", 2*gib, "n1", "n2"), vol("b", 2*gib, "n1", "n2")},
			[]string{"N+1: NO", "losing n1 loses or cannot rebuild: b (2.0 GiB"}},
		{"a dead node and a witness do not count as room",
			[]admin.Node{node("n1", 10*gib, "a"), node("n2", 10*gib, "a"), {Name: "n3", Role: "data", State: "dead", FreeBytes: 100 * gib},
				{Name: "w", Role: "witness", State: "alive", FreeBytes: 100 * gib}},
			[]admin.Volume{vol("a", gib, "n1", "n2")},
			[]string{"N+1: NO"}},
	} {
		got := headroom(tc.nodes, tc.vols)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: headroom =\n%s\nwant it to say %q", tc.name, got, w)
			}
		}
	}
}

func TestVolumeProblem(t *testing.T) {
	for _, tc := range []struct {
		v    admin.Volume
		want string
	}{
		{admin.Volume{CopiesWanted: 2, Copies: []admin.Copy{{Node: "n1", State: "in-sync"}, {Node: "n2", State: "in-sync"}}}, ""},
		{admin.Volume{CopiesWanted: 2, Copies: []admin.Copy{{Node: "n1", State: "in-sync"}, {Node: "n2", State: "resyncing"}}},
			"1 of 2 copies in sync (n2 resyncing)"},
		{admin.Volume{CopiesWanted: 3, Copies: []admin.Copy{{Node: "n1", State: "in-sync"}, {Node: "n2", State: "in-sync"}}},
			"2 of 3 copies in sync; 2 copies placed"},
		{admin.Volume{CopiesWanted: 1, Error: "damaged", Copies: []admin.Copy{{Node: "n1", State: "in-sync"}}}, "not served: damaged; one copy only: lost with its node (n1)"},
	} {
		if got := volumeProblem(tc.v); got != tc.want {
			t.Errorf("volumeProblem(%+v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
