package main

import (
	"strings"
	"testing"

	"tandem.io/tandem/appliance/admin"
)

// Hostile review 2 of issue 10: tandem status.

// TestReview10bHeadroomCountsACopyWithNothingToRebuildFrom: headroom
// checks only that some other alive data node has room for each copy the
// lost node held; it never asks whether a copy in sync is left to rebuild
// it from (and to serve the volume meanwhile). A 1-copy volume, or one
// whose other copies are out of sync or resyncing, is lost (or unavailable
// until the node returns) with that node, yet status says "N+1: yes —
// losing any one of N data nodes, every copy it held can be rebuilt on
// another". volumeProblem does not flag a 1-copy volume either, so the
// whole screen reads healthy.
func TestReview10bHeadroomCountsACopyWithNothingToRebuildFrom(t *testing.T) {
	const gib = int64(1) << 30
	node := func(name string, free int64, vols ...string) admin.Node {
		return admin.Node{Name: name, Role: "data", State: "alive", FreeBytes: free, Volumes: vols}
	}
	for _, tc := range []struct {
		name  string
		nodes []admin.Node
		vols  []admin.Volume
	}{
		{"a 1-copy volume",
			[]admin.Node{node("n1", 10*gib, "a"), node("n2", 10*gib), node("n3", 10*gib)},
			[]admin.Volume{{Name: "a", AllocatedBytes: gib, CopiesWanted: 1,
				Copies: []admin.Copy{{Node: "n1", Role: "primary", State: "in-sync"}}}}},
		{"the only in-sync copy is on one node, the other resyncing",
			[]admin.Node{node("n1", 10*gib, "a"), node("n2", 10*gib, "a"), node("n3", 10*gib)},
			[]admin.Volume{{Name: "a", AllocatedBytes: gib, CopiesWanted: 2,
				Copies: []admin.Copy{{Node: "n1", Role: "primary", State: "in-sync"}, {Node: "n2", Role: "replica", State: "resyncing"}}}}},
		{"the other copy is on a dead node",
			[]admin.Node{node("n1", 10*gib, "a"), node("n2", 10*gib), node("n3", 10*gib),
				{Name: "n4", Role: "data", State: "dead", Volumes: []string{"a"}}},
			[]admin.Volume{{Name: "a", AllocatedBytes: gib, CopiesWanted: 2,
				Copies: []admin.Copy{{Node: "n1", Role: "primary", State: "in-sync"}, {Node: "n4", Role: "replica", State: "out-of-sync"}}}}},
	} {
		got := headroom(tc.nodes, tc.vols)
		if strings.HasPrefix(got, "N+1: yes") {
			t.Errorf("%s: losing n1 leaves no in-sync copy of a to rebuild from, yet headroom says\n%s", tc.name, got)
		}
	}
}

// TestReview10bStatusSurvivesAnyProgress: status draws a resync's bar from
// the Progress another node sent (the API's JSON): bar repeats '-' width-n
// times, and strings.Repeat panics on a negative count, so a copy reported
// with more regions copied than in total (a node's bug, a version skew, a
// hostile answer) crashes the CLI instead of printing a wrong bar.
func TestReview10bStatusSurvivesAnyProgress(t *testing.T) {
	for _, p := range []admin.Progress{{RegionsTotal: 10, RegionsCopied: 11}, {RegionsTotal: 10, RegionsCopied: -1}} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("bar for %d of %d regions panicked: %v", p.RegionsCopied, p.RegionsTotal, r)
				}
			}()
			_ = bar(p.RegionsCopied, p.RegionsTotal, 20)
		}()
	}
}
