package appliance

import (
	"context"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
)

// Third review: findings in the cluster layer, as failing tests.

// DeleteVolume now unserves the leader's slot at once and forgets it
// (dropGoneSlot deletes it from n.vols). A reconciliation pass running
// meanwhile took the slot (n.slot) with the catalog as it was before the
// deletion, and waits for a worker (sem: four volumes at once; a mirror
// waiting for an unreachable replica holds one for 30 s). Once it gets
// one, tryLock succeeds on the forgotten slot and reconcileVolume acts on
// the deleted volume from its stale catalog: here it lists the volume's
// target again, redirecting to the primary, in a slot no pass will ever
// look at again (the gone loop walks n.vols). The target's name stays
// taken: the volume created again with that name is never served or
// redirected on this node ("add target: already exists", every pass).
// (As the primary, the stale pass starts a mirror and is only stopped by
// the LU reading its reservations from the current catalog.)
func TestReview3DeleteRacingAPassLeavesAnOrphanSlot(t *testing.T) {
	c := startMemCluster(t, 2)
	ctx := context.Background()
	v := c.createInSync("v", 64<<20)
	l := c.leader()
	if v.Primary == l.cfg.Name {
		to := other(v.Placement, v.Primary)
		if _, err := l.MoveVolume(ctx, "v", admin.MoveRequest{Primary: to}); err != nil {
			t.Fatal(err)
		}
		c.waitFor("v served by "+to, 30*time.Second, func() bool { return c.mirrorOf(to, "v") != nil })
	}

	// A pass on the leader reads the catalog and takes v's slot, then
	// waits for a worker.
	st := l.cluster.State()
	s := l.slot("v")
	if err := l.DeleteVolume(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// The worker it waited for is free: what reconcile's loop body does.
	if l.takeSlot(s) {
		err := l.reconcileVolume(ctx, st, st.Volumes["v"], s)
		t.Logf("the stale pass: role %d, err %v; the slot is in n.vols: %v", s.role, err, l.slot("v") == s)
		l.logOnce(s, err)
		s.unlock()
	}
	c.waitFor("the deleted copy gone from the leader's disk", 30*time.Second, func() bool {
		_, err := l.store.Get("v")
		return err != nil
	})
	// The same name again.
	if _, err := l.CreateVolume(ctx, admin.CreateVolumeRequest{Name: "v", Size: admin.Size{Bytes: 64 << 20}, Copies: 2}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		s2 := l.slot("v")
		if err := s2.lock(ctx); err != nil {
			t.Fatal(err)
		}
		role, lastErr := s2.role, s2.lastErr
		s2.unlock()
		if (role == rolePrimary || role == roleRedirect) && lastErr == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the volume created again is neither served nor redirected on %s: %s", l.cfg.Name, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
