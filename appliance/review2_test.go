package appliance

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
)

// Second review: findings on the fixes of the first, as failing tests.

// A revert whose barrier fails after SetPending committed (here the local
// revert waits for the store's operation slot, held by a merge or a
// deletion check, and the request's deadline passes; ENOSPC making the new
// head, or the final SetPending "" not committing, do the same) leaves
// Pending set, and RevertVolume says "it stays pending and is finished
// before the volume is served again". But the mirror keeps serving: the
// reconciler's fast path (same role, same epoch) never looks at Pending.
// Initiators write on, acknowledged; the next term (a move, or the primary
// restarting: finishPending runs whenever a mirror starts) reverts every
// copy again and every acknowledged write since is gone.
func TestReview2FailedRevertStaysServedAndIsRedoneOverAcknowledgedWrites(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	v := c.createInSync("v", 64*mib)
	ctx := context.Background()
	p := c.node(v.Primary)

	c.write("v", pattern(0xA1, mib), 0)
	if _, err := p.CreateSnapshot(ctx, "v", "s"); err != nil {
		t.Fatal(err)
	}
	c.write("v", pattern(0xB2, mib), 0)

	failRevert(t, c, v.Primary, "v", "s")
	t.Logf("catalog pending %q; served: %v", c.volume(v.Primary, "v").Pending, c.mirrorOf(v.Primary, "v") != nil)

	// An initiator writes on; the write is acknowledged.
	acked := pattern(0xC3, mib)
	c.write("v", acked, 0)

	// A planned move (a restart of the primary does the same).
	to := other(v.Placement, v.Primary)
	if _, err := p.MoveVolume(ctx, "v", admin.MoveRequest{Primary: to}); err != nil {
		t.Fatalf("move: %v", err)
	}
	c.waitFor("the new primary serving", 60*time.Second, func() bool { return c.mirrorOf(to, "v") != nil })
	got := make([]byte, mib)
	if err := c.node(to).slot("v").current.Load().ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, acked) {
		t.Fatalf("after the move the volume reads %#x at 0 where an acknowledged write put %#x (the failed revert was redone over it)", got[0], acked[0])
	}
}

// A primary deposed without knowing it yet (its reconciler lags: the
// catalog replayed late, or its SetPrimary committed after an unknown
// outcome) writes an initiator's write into its local copy before the
// write fails (Mirror writes the local copy alongside the replicas). The
// new primary, whose mirror started with the old primary in the in-sync
// set, was refused by it (its own mirror open) and dropped it with a dirty
// map that holds only the new primary's writes. Once the old mirror
// closes, the new primary resyncs only those regions and marks the copy in
// sync: the region the deposed primary wrote differs from every other copy
// on a copy the catalog says is in sync (LeaveInSync is a no-op by then:
// the drop came first). A move back serves data no one acknowledged, and
// verify reports a difference.
func TestReview2DeposedPrimaryWriteSurvivesIncrementalResync(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	h := c.holdAndSupersede("v", 64*mib, nil)
	newP := h.newP
	ctx := context.Background()
	// The new primary writes region 0 (acknowledged); an initiator of the
	// old primary writes region 16 MiB: it fails...
	c.writeBothSides(h)
	h.release()
	c.oldCopyMatches(h, "a write no one acknowledged stayed on it")
	res, err := c.node(newP).VerifyVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Differences) > 0 {
		t.Fatalf("verify finds differences between in-sync copies: %+v", res.Differences)
	}
}

// The primary's disk is replaced: SetCopyID is refused for the primary
// ("move the primary to an in-sync copy") and the node serves the volume
// as unavailable. But MoveVolume only runs on a primary that serves
// (onPrimary: "not served yet"), there is no failover, and a node that is
// the primary of a volume cannot be removed: the volume, whose data is
// whole on the in-sync replica, can never be served again. (Meanwhile the
// refused SetCopyID is proposed again every pass: one raft entry a second
// per volume, for good.)
func TestReview2ReplacedPrimaryCanBeMovedToItsInSyncReplica(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	v := c.createInSync("v", 64*mib)
	before := pattern(0xA1, mib)
	c.write("v", before, 0)
	replica := other(v.Placement, v.Primary)

	old := c.nodes[v.Primary]
	old.stop()
	cfg := old.cfg
	cfg.DataDir = filepath.Join(t.TempDir(), v.Primary+"-new")
	cfg.Join = []string{c.nodes[replica].cfg.Cluster}
	cfg.ClusterKeyFile = c.key
	c.start(cfg)
	c.waitFor("the replaced primary's copy made", 30*time.Second, func() bool {
		_, err := c.node(v.Primary).store.Get("v")
		return err == nil
	})

	// What the operator is told to do: move the primary to an in-sync copy.
	var err error
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var cl *admin.Client
		cl, err = c.node(replica).clientOf(v.Primary)
		if err != nil {
			t.Fatal(err)
		}
		cl.Forwarded = ""
		if _, err = cl.MoveVolume(context.Background(), "v", admin.MoveRequest{Primary: replica}); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the volume cannot be moved off its replaced primary to the in-sync copy on %s: %v", replica, err)
	}
	c.waitFor("served by the replica", 30*time.Second, func() bool { return c.mirrorOf(replica, "v") != nil })
	got := make([]byte, mib)
	if err := c.node(replica).slot("v").current.Load().ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, before) {
		t.Fatalf("served data %#x, want %#x", got[0], before[0])
	}
}

// A clone without a snapshot named, asked of a node that is not the raft
// leader, for a volume whose primary is not the leader either: the
// follower forwards it to the leader (one hop), the leader's
// CreateSnapshot("for-NAME") must go to the primary (a second hop, of
// another request) and forwardTo refuses it because the incoming request
// was forwarded. The CLI's `volume clone` to any node but the leader or
// the primary always fails.
func TestReview2CloneAskedOfAFollowerWorks(t *testing.T) {
	c := startMemCluster(t, 3)
	ctx := context.Background()
	if _, err := c.leader().CreateVolume(ctx, admin.CreateVolumeRequest{Name: "v", Size: admin.Size{Bytes: 64 << 20}, Copies: 2}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("v in sync", 60*time.Second, func() bool {
		v := c.leader().cluster.State().Volumes["v"]
		return len(v.InSync) == 2 && c.mirrorOf(v.Primary, "v") != nil
	})
	leader := c.leader().cfg.Name
	v := c.volume(leader, "v")
	if v.Primary == leader {
		to := other(v.Placement, leader)
		if _, err := c.node(leader).MoveVolume(ctx, "v", admin.MoveRequest{Primary: to}); err != nil {
			t.Fatalf("move off the leader: %v", err)
		}
		c.waitFor("served by "+to, 30*time.Second, func() bool { return c.mirrorOf(to, "v") != nil })
		v = c.volume(leader, "v")
	}
	// Ask the primary's node itself (a follower).
	cl := &admin.Client{BaseURL: "http://" + c.nodes[v.Primary].cfg.API}
	if _, err := cl.CloneVolume(ctx, "v", admin.CloneRequest{Name: "c"}); err != nil {
		t.Fatalf("clone asked of %s (leader %s, primary %s): %v", v.Primary, leader, v.Primary, err)
	}
}

// failRevert makes a revert of vol to snap on its primary fail after
// SetPending committed: the primary's store slot for the volume is held
// (what a merge or a deletion does) until the request's deadline passes.
func failRevert(t *testing.T, c *memCluster, primary, vol, snap string) {
	t.Helper()
	ctx := context.Background()
	p := c.node(primary)
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.store.Delete(ctx, vol, func() error {
			close(held)
			<-release
			return errors.New("not deleted: the test only held the slot")
		})
	}()
	<-held
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := p.RevertVolume(rctx, vol, admin.RevertRequest{Snapshot: snap, Force: true})
	cancel()
	close(release)
	<-done
	if err == nil {
		t.Skip("the revert succeeded; the scenario needs it to fail")
	}
	t.Logf("revert failed: %v", err)
}

// A revert left pending (the primary crashed in it, or it failed as in
// failRevert) names a snapshot the catalog still lets anyone delete: the
// operator, told the revert failed, deletes the snapshot. Every later
// mirror start runs finishPending, whose revert to the missing snapshot
// fails; SetPending "" is only proposed after it succeeds, and only the
// primary may clear it: the volume is never served again, by any node.
func TestReview2PendingRevertToADeletedSnapshotNeverServesAgain(t *testing.T) {
	c := startMemCluster(t, 3)
	const mib = 1 << 20
	v := c.createInSync("v", 64*mib)
	ctx := context.Background()
	p := c.node(v.Primary)
	if _, err := p.CreateSnapshot(ctx, "v", "s"); err != nil {
		t.Fatal(err)
	}
	failRevert(t, c, v.Primary, "v", "s")
	if err := c.leader().DeleteSnapshot(ctx, "v", "s"); err != nil {
		t.Logf("delete of the snapshot a pending revert needs refused (good): %v", err)
		return
	}
	t.Logf("snapshot deleted while %q is pending", c.volume(v.Primary, "v").Pending)
	// The primary restarts (a move does the same).
	c.nodes[v.Primary].stop()
	c.start(c.nodes[v.Primary].cfg)
	deadline := time.Now().Add(20 * time.Second)
	for c.mirrorOf(v.Primary, "v") == nil {
		if time.Now().After(deadline) {
			t.Fatalf("volume not served 20 s after its primary restarted: %s", c.node(v.Primary).slot("v").lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Under -race: the reconciler lists the store every pass
// (dropLocalCopies → Store.List → info → Layer.Allocated reads l.f
// without pinMu) while a snapshot freezes the head (Layer.Freeze swaps l.f
// under pinMu): a data race on an interface value (a torn read can crash).
// Fails only with -race.
func TestReview2StoreListRacesSnapshotFreeze(t *testing.T) {
	c := startMemCluster(t, 1)
	ctx := context.Background()
	n := c.node("n1")
	c.createServed("v", 64<<20)
	stop := make(chan struct{})
	listed := make(chan struct{})
	go func() {
		defer close(listed)
		for {
			select {
			case <-stop:
				return
			default:
				n.store.List()
			}
		}
	}()
	for i := 0; i < 20; i++ {
		if _, err := n.store.Snapshot(ctx, "v", "r"+string(rune('a'+i))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-listed
}
