package appliance

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/appliance/lease"
)

// Hostile review of issue 10 (leases and automatic failover).

// TestReview10GateFencedAsThePrimaryStartsServingStaysFencedForever: the
// lease loop's fenceDeposed runs while servePrimary is between storing the
// new gate (s.gate.Store) and setting s.id at its end. It compares the
// catalog's volume ID with s.id, still "" on a first serve of a slot (every
// volume after a restart), and fences a gate the catalog fully agrees
// with. The reconciler then finds the slot rolePrimary at the catalog's
// epoch and ID and keeps it (followPlacement): the fenced gate never opens,
// and every I/O to the volume waits until its initiator gives up, with the
// node's lease valid and nothing to fail over. (fenceDeposed also reads s.id
// without the slot lock servePrimary writes it under: a data race.)
//
// Here a restarted node's fenceDeposed runs back to back (its lease loop
// runs it after every renewal, 4 times a second) while its reconciler
// serves its volumes again. Failed at 0128815 (2 to 8 of 8 volumes hung);
// passes since 8cc5b1a (the gate carries the volume ID). Still open: a
// fenceDeposed whose State() predates the apply that made this node the
// primary fences the gate stored after it the same way, and a spuriously
// fenced gate is never served again.
func TestReview10GateFencedAsThePrimaryStartsServingStaysFencedForever(t *testing.T) {
	c := startMemCluster(t, 1)
	const vols = 6
	for i := range vols {
		c.createServed(fmt.Sprintf("v%d", i), 16<<20)
	}
	cfg := c.nodes["n1"].cfg
	c.nodes["n1"].stop()

	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("n1 stopped: %v", err)
		}
	})
	for start := time.Now(); !n.wired.Load(); time.Sleep(time.Millisecond) {
		if time.Since(start) > 30*time.Second {
			t.Fatal("n1 not wired after its restart")
		}
	}
	served := func() bool {
		for i := range vols {
			if n.slot(fmt.Sprintf("v%d", i)).current.Load() == nil {
				return false
			}
		}
		return true
	}
	for start := time.Now(); !served(); runtime.Gosched() {
		n.fenceDeposed()
		if time.Since(start) > 30*time.Second {
			t.Fatal("n1's volumes not served after its restart")
		}
	}

	for start := time.Now(); !n.leases.holder.Valid(time.Now()); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("n1 holds no lease")
		}
	}
	for i := range vols {
		name := fmt.Sprintf("v%d", i)
		if !ioWithin(n, name, 2*time.Second) {
			g := n.slot(name).gate.Load()
			t.Errorf("volume %s, served here as the primary at the catalog's epoch with the node's lease valid, serves no I/O (gate fenced: %v)",
				name, g != nil && g.fenced.Load())
		}
	}
}

// ioWithin reports whether a write to vol through the mirror serving it on
// n succeeds within limit (each attempt bounded, the mirror looked up
// again each time: a reconciler may serve it anew).
func ioWithin(n *Node, vol string, limit time.Duration) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		m := n.slot(vol).current.Load()
		if m == nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := m.WriteAt(ctx, pattern(0x5A, 4096), 0, true)
		cancel()
		if err == nil {
			return true
		}
	}
	return false
}

// TestReview10PromotionByANodeThatNoLongerLeadsIsNotCommitted: promote
// decides on a Grantor of the term this node led (failoverPass takes it
// once per pass; a pass goes on for seconds when an earlier promotion's
// Propose or Sync waits), holds promoteMu (which only holds back this
// node's grants) and calls Propose, which, on a node that no longer leads,
// forwards the SetPrimary{Failover} to the new leader (and on a leader
// that loses office mid-Apply, retries through it). The new leader commits
// it without any look at its own grants: the old primary may hold a lease
// the new leader granted it a moment ago, with an index before the
// promotion, and serves reads (stale once the new primary acknowledges
// writes) until its next renewal fences it. A promotion must commit only
// while its decider still leads in the term of the grants it decided on.
func TestReview10PromotionByANodeThatNoLongerLeadsIsNotCommitted(t *testing.T) {
	c := startMemCluster(t, 3)
	v := c.createInSync("vol", 64<<20)
	leader := c.leader()
	var x *Node // a node that led an earlier term, as it stands after losing office
	for _, name := range c.order {
		if c.node(name) != leader {
			x = c.node(name)
			break
		}
	}
	cand := other(v.Placement, v.Primary)
	// x's record of its former term: the primary's last grant long over,
	// the candidate's recent.
	g := lease.NewGrantor(x.leaseTerms(), time.Now().Add(-time.Minute))
	g.Grant(cand, time.Now())
	p := c.node(v.Primary)
	c.waitFor("the primary holding a lease from the current leader", 10*time.Second,
		func() bool { return p.leases.holder.Valid(time.Now()) })

	err := x.promote(context.Background(), x.cluster.Term(), g, x.cluster.State(), v, cand)
	if !leader.cluster.IsLeader() {
		t.Skip("leadership moved during the test: inconclusive")
	}
	cur := leader.cluster.State().Volumes["vol"]
	if cur.Primary != v.Primary || cur.Epoch != v.Epoch {
		t.Fatalf("%s (not the leader) promoted %s in place of %s, whose lease from leader %s was valid: the catalog has primary %s at epoch %d (was %s at %d; promote: %v)",
			x.cfg.Name, cand, v.Primary, leader.cfg.Name, cur.Primary, cur.Epoch, v.Primary, v.Epoch, err)
	}
}

// TestReview10LeaseTermsAreTheClustersNotEachNodes: --lease is read per
// node ("every node of a cluster must use the same") and nothing checks
// it. A holder bounds its lease by the leader's grant and its own Duration,
// but a leader's controller counts Wait from its own terms only. A node
// started with a shorter --lease (a rolling change of it, a typo) that
// becomes leader promotes a replica Wait (its own) after taking office,
// while primaries still serve under leases the previous leader granted for
// its longer Duration: two primaries. Either such a node must not join (or
// lead), or the terms must be the cluster's (in the catalog): no node may
// hold a lease longer than any voter's controller would wait.
func TestReview10LeaseTermsAreTheClustersNotEachNodes(t *testing.T) {
	leases := map[string]time.Duration{"n1": 2 * time.Second, "n2": 2 * time.Second, "n3": 200 * time.Millisecond}
	c := &memCluster{t: t, nodes: map[string]*memNode{}}
	base := t.TempDir()
	for i, name := range []string{"n1", "n2", "n3"} {
		cfg := Config{DataDir: filepath.Join(base, name), Portal: freeAddr(t), API: freeAddr(t), Cluster: freeAddr(t), Link: freeAddr(t),
			Name: name, IQNPrefix: "iqn.2026-11.io.tandem", AllowUnsafeFilesystem: true, Lease: leases[name],
			Logger: slog.New(slog.DiscardHandler)}
		if i > 0 {
			cfg.Join = []string{c.nodes["n1"].cfg.Cluster}
			cfg.ClusterKeyFile = c.key
		}
		if name != "n3" {
			c.order = append(c.order, name)
			c.start(cfg)
		} else if !c.startMayBeRefused(cfg, 20*time.Second) {
			return // refused: the cluster keeps one set of terms
		}
		if i == 0 {
			b, err := os.ReadFile(filepath.Join(cfg.DataDir, "cluster.key"))
			if err != nil {
				t.Fatal(err)
			}
			c.key = filepath.Join(base, "cluster.key")
			if err := os.WriteFile(c.key, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.waitFor("every node in the catalog and holding a lease", 30*time.Second, func() bool {
		for _, mn := range c.nodes {
			if len(mn.n.cluster.State().Nodes) != 3 || !mn.n.leases.holder.Valid(time.Now()) {
				return false
			}
		}
		return true
	})
	servers, err := c.node("n1").cluster.Servers()
	if err != nil {
		t.Fatal(err)
	}
	voter := map[string]bool{}
	for _, s := range servers {
		voter[s.ID] = s.Suffrage == cluster.Voter
	}
	now := time.Now()
	for hn, h := range c.nodes {
		for vn, v := range c.nodes {
			if !voter[vn] {
				continue
			}
			if rem, wait := h.n.leases.holder.Remaining(now), v.n.leaseTerms().Wait(); rem > wait {
				t.Errorf("%s holds a lease for %v more, but %s, a voter, would as leader take it as ended %v after taking office",
					hn, rem.Round(time.Millisecond), vn, wait.Round(time.Millisecond))
			}
		}
	}
}

// startMayBeRefused starts a node that joins the cluster and reports
// whether it became part of it (ready) within limit; a node that is not
// is stopped.
func (c *memCluster) startMayBeRefused(cfg Config, limit time.Duration) bool {
	t := c.t
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	mn := &memNode{cfg: cfg, n: n}
	stopped := false
	mn.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(mn.stop)
	for start := time.Now(); n.Health().Status != "ok"; time.Sleep(20 * time.Millisecond) {
		select {
		case <-done:
			stopped = true
			cancel()
			return false
		default:
		}
		if time.Since(start) > limit {
			mn.stop()
			return false
		}
	}
	c.nodes[cfg.Name] = mn
	c.order = append(c.order, cfg.Name)
	return true
}

// TestReview10FailoverLeavesInSyncCopiesThatDiffer: with three copies, a
// write the old primary had in flight when it failed (killed between its
// sends, or a write that passed the gate before the lease ended and went
// out after) reaches one replica, R, and not the candidate, C, whose epoch
// is already raised. SetPrimary{Failover} drops only the old primary from
// the in-sync set; the new primary's mirror takes R on as in sync and
// repairs nothing (the activity log that knows those regions is the old
// primary's). R then holds a write the volume never acknowledged and C
// never had: a read through C returns the old data, and after a failover
// to R the same block returns the unacknowledged write.
func TestReview10FailoverLeavesInSyncCopiesThatDiffer(t *testing.T) {
	const mib = 1 << 20
	c := startMemCluster(t, 3)
	ctx := context.Background()
	if _, err := c.leader().CreateVolume(ctx, admin.CreateVolumeRequest{Name: "vol", Size: admin.Size{Bytes: 64 * mib}, Copies: 3}); err != nil {
		t.Fatal(err)
	}
	var v cluster.Volume
	c.waitFor("vol in sync on 3 copies and served", 60*time.Second, func() bool {
		v = c.leader().cluster.State().Volumes["vol"]
		return len(v.InSync) == 3 && c.mirrorOf(v.Primary, "vol") != nil && c.mirrorInSync(v.Primary, "vol")
	})
	p := v.Primary
	cand, r := v.InSync[0], v.InSync[1]
	if cand == p {
		cand = v.InSync[2]
	} else if r == p {
		r = v.InSync[2]
	}
	c.write("vol", pattern(0x11, mib), 0) // acknowledged on every copy

	// The old primary's and the candidate's reconcilers are held: the
	// interleaving is set by hand.
	ps, cs := c.node(p).slot("vol"), c.node(cand).slot("vol")
	for _, s := range []*served{ps, cs} {
		if err := s.lock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var once [2]sync.Once
	release := func(i int, s *served) { once[i].Do(s.unlock) }
	t.Cleanup(func() { release(0, ps); release(1, cs) })
	old := ps.mirror

	// The controller's promotion, and the first thing the candidate does
	// as the new primary (servePrimary: RaiseEpoch on its own copy).
	if _, err := c.leader().cluster.Propose(ctx, cluster.SetPrimary{Volume: "vol", Epoch: v.Epoch, Node: cand, Failover: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.node(cand).repl.RaiseEpoch(v.ID, v.Epoch+1); err != nil {
		t.Fatal(err)
	}
	// The old primary's write in flight: the candidate refuses it, R (not
	// yet reached by the new primary's mirror) takes it.
	if err := old.WriteAt(ctx, pattern(0xEE, mib), 0, true); err == nil {
		t.Fatal("the old primary's write was acknowledged after the failover")
	}
	release(1, cs)
	c.waitFor("the new primary serving with "+r+" in sync", 15*time.Second, func() bool {
		cur := c.volume(cand, "vol")
		if cur.Primary != cand || !inSync(cur, r) {
			return false
		}
		m := c.node(cand).slot("vol").current.Load()
		if m == nil {
			return false
		}
		for _, st := range m.Status() {
			if st.Name == r {
				return st.State == "in-sync"
			}
		}
		return false
	})
	release(0, ps)
	c.waitFor("the old primary's copy in sync again", 60*time.Second, func() bool {
		return inSync(c.volume(cand, "vol"), p) && c.mirrorInSync(cand, "vol")
	})
	want := c.readLocal(cand, "vol", 0, mib)
	if got := c.readLocal(r, "vol", 0, mib); !bytes.Equal(got, want) {
		t.Fatalf("%s, in sync with the new primary %s, holds %#x at 0 where the primary holds %#x (a write %s never acknowledged)",
			r, cand, got[0], want[0], p)
	}
}
