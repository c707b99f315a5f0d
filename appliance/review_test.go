package appliance

import (
	"bytes"
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/volume"
)

// Review findings, as failing tests. Each says what must hold; the
// scenario is in its comment.

// A replica whose disk was replaced (its node restarts with an empty data
// directory, same name and addresses, joining the cluster again) gets a new
// empty copy from the reconciler (ensureCopy). The primary still holds the
// dirty map it kept while the replica was down, so it resyncs only the
// regions written meanwhile and marks the empty copy in sync: every region
// written before the replica went down is zeros on an "in-sync" copy, and
// a move to that node serves zeros.
func TestReviewReplacedReplicaDiskIsRebuiltInFull(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	v := c.createInSync("v", 64*mib)
	replica := other(v.Placement, v.Primary)

	before := pattern(0xA1, mib)
	c.write("v", before, 0) // both copies have it

	// The replica's disk dies: its node stops.
	old := c.nodes[replica]
	old.stop()
	// A write while it is down: the primary drops it and keeps a dirty map.
	c.write("v", pattern(0xB2, mib), 8*mib)
	c.waitFor("the replica dropped", 30*time.Second, func() bool { return !inSync(c.volume(v.Primary, "v"), replica) })

	// It comes back with a new, empty disk: same name and addresses.
	cfg := old.cfg
	cfg.DataDir = filepath.Join(t.TempDir(), replica+"-new")
	cfg.Join = []string{c.nodes[v.Primary].cfg.Cluster}
	cfg.ClusterKeyFile = c.key
	c.start(cfg)

	c.waitFor("the replica back in sync", 60*time.Second, func() bool {
		return inSync(c.volume(v.Primary, "v"), replica) && c.mirrorInSync(v.Primary, "v")
	})
	if got := c.readLocal(replica, "v", 0, mib); !bytes.Equal(got, before) {
		t.Fatalf("the replica's copy is in sync in the catalog but lacks data written before its disk was replaced: byte 0 is %#x, want %#x", got[0], before[0])
	}
}

// A replica that fails a snapshot barrier (here: it still holds a snapshot
// of that name, a leftover the merge did not remove yet — DeleteSnapshot
// does not fail when a remote merge fails, and the reconciler drops
// unknown snapshots only after 2 minutes) is dropped and rebuilt from the
// live data, keeping its own old snapshot layer. CreateSnapshot answers
// success, the catalog names the snapshot, and the rebuilt replica rejoins
// the in-sync set with a snapshot of that name holding other data. A move
// to it and a revert (or a clone placed on it) then serves the wrong data.
func TestReviewSnapshotBarrierFailureLeavesWrongSnapshotOnInSyncCopy(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	v := c.createInSync("v", 64*mib)
	replica := other(v.Placement, v.Primary)
	ctx := context.Background()

	c.write("v", pattern(0xA1, mib), 0)
	// A leftover snapshot "s" on the replica only, with data A1.
	if _, err := c.node(replica).store.Snapshot(ctx, "v", "s"); err != nil {
		t.Fatal(err)
	}
	c.write("v", pattern(0xB2, mib), 0)

	_, err := c.node(v.Primary).CreateSnapshot(ctx, "v", "s")
	if err != nil {
		t.Logf("snapshot refused (acceptable): %v", err)
		return
	}
	c.waitFor("both copies in sync", 60*time.Second, func() bool {
		return len(c.volume(v.Primary, "v").InSync) == 2 && c.mirrorInSync(v.Primary, "v")
	})
	// What the replica's "s" holds: a clone of it, local to that node.
	id := volume.NewIdentity()
	if _, err := c.node(replica).store.Clone(ctx, "v", "s", volume.Spec{Name: "check", Size: 64 * mib, Identity: id}); err != nil {
		t.Fatalf("the in-sync replica has no usable snapshot s: %v", err)
	}
	p := make([]byte, mib)
	dev, err := c.node(replica).store.Device("check")
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.ReadAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	if p[0] != 0xB2 {
		t.Fatalf("snapshot s on the in-sync replica %s holds %#x, the primary's holds 0xb2: a move and revert serve the wrong data", replica, p[0])
	}
}

// remove-copy then add-copy of the same node, while the primary's slot is
// busy (a verify holds it for the whole run; or both commits land between
// two reconciler passes): the primary never sees the copy leave, so its
// mirror keeps the replica with its old state and no full rebuild; the
// replica's node, which did see it leave, deleted its copy and made a new
// empty one. The next write fails on the old stream, the primary drops the
// replica (a no-op in the catalog), resyncs only that write's regions and
// marks the empty copy in sync.
func TestReviewRemoveAddCopyWhilePrimaryBusyRebuildsInFull(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	v := c.createInSync("v", 64*mib)
	replica := other(v.Placement, v.Primary)
	ctx := context.Background()

	before := pattern(0xA1, mib)
	c.write("v", before, 0)

	// The primary is busy with the volume (what onPrimary does for a verify).
	s := c.node(v.Primary).slot("v")
	if err := s.lock(ctx); err != nil {
		t.Fatal(err)
	}
	locked := true
	defer func() {
		if locked {
			s.unlock()
		}
	}()
	if _, err := c.leader().RemoveCopy(ctx, "v", replica); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the replica's copy deleted", 30*time.Second, func() bool {
		_, err := c.node(replica).store.Get("v")
		return err != nil
	})
	if _, err := c.leader().AddCopy(ctx, "v", admin.CopyRequest{Node: replica}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the replica's new copy", 30*time.Second, func() bool {
		_, err := c.node(replica).store.Get("v")
		return err == nil
	})
	s.unlock()
	locked = false

	c.write("v", pattern(0xB2, mib), 8*mib)
	c.waitFor("the replica back in sync", 60*time.Second, func() bool {
		return inSync(c.volume(v.Primary, "v"), replica) && c.mirrorInSync(v.Primary, "v")
	})
	if got := c.readLocal(replica, "v", 0, mib); !bytes.Equal(got, before) {
		t.Fatalf("the re-added copy is in sync but lacks data written before: byte 0 is %#x, want %#x", got[0], before[0])
	}
}

// A primary whose reconciler has not applied a newer epoch yet (the catalog
// replayed late, or MoveVolume's SetPrimary failing with an unknown outcome
// and committing anyway, after which MoveVolume serves again at the old
// epoch) still has its mirror open while the new primary writes into its
// copy through the replication server. The old mirror writes its local
// copy without fencing (replication/doc.go: the caller must stop it before
// it serves the copy to another primary): an initiator's write to the old
// primary fails (deposed) but lands on the local copy, over a write the new
// primary acknowledged. The old primary stays in the in-sync set (a planned
// move keeps it), so that acknowledged write is lost on it.
func TestReviewOldPrimaryCopyIsFencedFromItsOwnMirror(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	ctx := context.Background()
	// The old primary's reconciler does not act on the volume yet, and
	// the move commits (as a late-committed SetPrimary would).
	h := c.holdAndSupersede("v", 64*mib, func(h *held) bool {
		// Served, with the old primary's copy in sync, or dropped (its
		// replication server refuses a primary while its own mirror is
		// open): both are safe outcomes.
		return c.node(h.newP).slot("v").current.Load() != nil &&
			(c.mirrorInSync(h.newP, "v") || !inSync(c.volume(h.newP, "v"), h.oldP))
	})
	oldP, newP, oldMirror := h.oldP, h.newP, h.mirror
	acked := pattern(0xB2, mib)
	if err := c.node(newP).slot("v").current.Load().WriteAt(ctx, acked, 0, true); err != nil {
		t.Fatal(err)
	}
	// An initiator still logged in to the old primary writes the same
	// region: refused, as it must be...
	if err := oldMirror.WriteAt(ctx, pattern(0xA1, mib), 0, true); err == nil {
		t.Fatal("a deposed primary acknowledged a write")
	}
	// ...but the old primary's copy, in sync in the catalog, must still
	// hold what the new primary acknowledged.
	if !inSync(c.volume(newP, "v"), oldP) {
		return // taken out of the in-sync set: acceptable
	}
	if got := c.readLocal(oldP, "v", 0, mib); got[0] != acked[0] {
		t.Fatalf("the old primary's in-sync copy holds %#x where the new primary acknowledged %#x", got[0], acked[0])
	}
}

// remove-copy takes out an in-sync replica while the primary's node is
// down: the catalog only checks it is not the last in-sync copy, counting
// the dead primary. The replica's node then deletes its copy, and the only
// copy left is on a node that is down (and maybe never comes back).
func TestReviewRemoveCopyRefusedWhenOnlyDeadCopiesRemain(t *testing.T) {
	c := startMemCluster(t, 3)
	v := c.createInSync("v", 64<<20)
	replica := other(v.Placement, v.Primary)
	c.nodes[v.Primary].stop()
	ask := c.leader()
	c.waitFor("the primary seen dead", 30*time.Second, func() bool {
		m, ok := ask.members.Member(v.Primary)
		return !ok || m.State != "alive"
	})
	_, err := ask.RemoveCopy(context.Background(), "v", replica)
	t.Logf("remove-copy: %v", err)
	if err == nil {
		t.Fatalf("the last live copy (on %s) was removed while the primary %s is down", replica, v.Primary)
	}
}

// The primary's disk is replaced (same as above, for the primary's node):
// the catalog still names it primary with its copy in sync, the reconciler
// makes an empty copy and serves it, and initiators read zeros where their
// data was; every write then goes to the good replica too.
func TestReviewReplacedPrimaryDiskIsNotServed(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	v := c.createInSync("v", 64*mib)
	before := pattern(0xA1, mib)
	c.write("v", before, 0)

	old := c.nodes[v.Primary]
	old.stop()
	cfg := old.cfg
	cfg.DataDir = filepath.Join(t.TempDir(), v.Primary+"-new")
	cfg.Join = []string{c.nodes[other(v.Placement, v.Primary)].cfg.Cluster}
	cfg.ClusterKeyFile = c.key
	c.start(cfg)

	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := c.node(v.Primary).slot("v").current.Load(); m != nil {
			p := make([]byte, mib)
			if err := m.ReadAt(context.Background(), p, 0); err == nil && !bytes.Equal(p, before) {
				t.Fatalf("the primary serves a new empty copy: byte 0 reads %#x, the data written was %#x", p[0], before[0])
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A primary trusts any dirty map its store holds for an out-of-sync
// replica (replicaSets), even one it kept in an earlier term as primary.
// replication/doc.go: incremental only if the map was kept by every
// primary since the replica left the in-sync set. Scenario: C is down;
// A (primary) keeps a dirty map for it; the volume moves to B, which
// writes while C is still down; it moves back to A; C returns. A resyncs
// C from its old map, which lacks B's writes, and marks C in sync.
func TestReviewDirtyMapFromAnEarlierTermIsNotTrusted(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	ctx := context.Background()
	if _, err := c.leader().CreateVolume(ctx, admin.CreateVolumeRequest{Name: "v", Size: admin.Size{Bytes: 64 * mib}, Copies: 3}); err != nil {
		t.Fatal(err)
	}
	var v cluster.Volume
	c.waitFor("three copies in sync", 60*time.Second, func() bool {
		v = c.leader().cluster.State().Volumes["v"]
		return len(v.InSync) == 3 && c.mirrorInSync(v.Primary, "v")
	})
	a := v.Primary
	b, cc := v.Placement[1], v.Placement[2]

	// C goes down; A drops it and keeps its dirty map.
	down := c.nodes[cc]
	down.stop()
	c.write("v", pattern(0xA1, mib), 0)
	c.waitFor("C dropped", 30*time.Second, func() bool { return !inSync(c.volume(a, "v"), cc) })

	move := func(to string) {
		t.Helper()
		if _, err := c.node(c.volume(b, "v").Primary).MoveVolume(ctx, "v", admin.MoveRequest{Primary: to}); err != nil {
			t.Fatalf("move to %s: %v", to, err)
		}
		c.waitFor("served by "+to, 30*time.Second, func() bool {
			return c.volume(to, "v").Primary == to && c.node(to).slot("v").current.Load() != nil
		})
	}
	move(b)
	written := pattern(0xB2, mib)
	c.write("v", written, 8*mib) // under B: C misses it too
	move(a)

	// C comes back with its disk.
	c.start(down.cfg)
	c.waitFor("C back in sync", 60*time.Second, func() bool {
		return inSync(c.volume(a, "v"), cc) && c.mirrorInSync(a, "v")
	})
	if got := c.readLocal(cc, "v", 8*mib, mib); !bytes.Equal(got, written) {
		t.Fatalf("C is in sync but lacks the write made while B was primary: byte reads %#x, want %#x", got[0], written[0])
	}
}

// A negative copy count reaches place(), which slices fit[:copies] and
// panics (net/http recovers it and drops the connection: no answer, a
// stack trace in the log per request).
func TestReviewCreateWithNegativeCopiesIsRefused(t *testing.T) {
	h := apiNode(t)
	req := httptest.NewRequest("POST", "/v1/volumes", strings.NewReader(`{"name":"a","size":"64MiB","copies":-1}`))
	w := httptest.NewRecorder()
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("create with copies -1 panicked: %v", r)
			}
		}()
		h.ServeHTTP(w, req)
	}()
	if w.Code != 400 {
		t.Fatalf("create with copies -1: status %d, want 400: %s", w.Code, w.Body)
	}
}
