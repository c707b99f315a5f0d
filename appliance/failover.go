package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/appliance/floating"
	"tandem.io/tandem/appliance/lease"
	"tandem.io/tandem/replication"
	"tandem.io/tandem/target/iscsi"
)

// Failover. Every node holds a lease it renews with the raft leader
// (package lease); a primary serves I/O only while it holds it and the
// catalog, as of the grant, still names it primary at its epoch (a gate per
// served volume). The leader's controller promotes an in-sync replica,
// whose node holds a lease, in place of a primary whose lease has surely
// ended: SetPrimary with Failover, a new epoch, the old primary out of the
// in-sync set. The old primary, when it is heard from again, learns from
// the catalog before its next lease that it is not primary any more
// (fenceDeposed), closes its sessions, and its copy is renewed and rebuilt
// from the new primary (a write it applied alone is discarded).

// startGrace is how long a starting node's primaries wait for its first
// lease (raft electing a leader, a restarted cluster finding its majority)
// before they refuse logins as a node that lost its lease does.
const startGrace = 10 * time.Second

// failoverTick is how often the controller looks for primaries whose lease
// ended.
const failoverTick = 50 * time.Millisecond

// leaseState is the node's side of leases, and on the leader the grants.
type leaseState struct {
	holder *lease.Holder
	// warned is set once a --lease other than the cluster's was reported.
	warned atomic.Bool

	mu sync.Mutex // protects lapsedAt
	// lapsedAt is when the lease was found lapsed, zero while it holds.
	lapsedAt time.Time

	// promoteMu: a promotion holds grants back (write lock) from its check
	// of the old primary's lease until the catalog change is applied on
	// the leader, so that no lease is granted with an index before it.
	promoteMu sync.RWMutex
	// known are the catalog's nodes, as the controller last saw them.
	known atomic.Pointer[[]string]
	// selfTerm is the term of the last lease this node granted itself as
	// the leader (0 after a grant from another).
	selfTerm  atomic.Uint64
	grantMu   sync.Mutex // protects grantor and grantTerm
	grantor   *lease.Grantor
	grantTerm uint64
}

// leaseTerms are the cluster's lease terms: the duration its catalog fixed
// when it was made (the same on every node, whatever their --lease), and
// the drift bound Tandem states.
func (n *Node) leaseTerms() lease.Terms {
	d, known := n.cluster.Lease()
	if known && n.cfg.Lease != 0 && n.cfg.Lease != d && !n.leases.warned.Swap(true) {
		n.log.Warn("--lease differs from the cluster's lease, which is fixed when the cluster is made: using the cluster's",
			"lease", n.cfg.Lease, "cluster_lease", d)
	}
	return lease.Terms{Duration: d, Drift: lease.DefaultDrift}
}

// grant implements cluster.Config.Grant on the leader.
func (n *Node) grant(node string, term uint64) (cluster.Granted, error) {
	n.leases.promoteMu.RLock()
	defer n.leases.promoteMu.RUnlock()
	g := n.grantorOf(term)
	now := time.Now()
	var known []string
	if k := n.leases.known.Load(); k != nil {
		known = *k
	}
	return cluster.Granted{Duration: g.Grant(node, now), Lapsed: g.Lapsed(now, known)}, nil
}

// grantorOf returns the grant record of this node's term of office term,
// made on first use: grants of another term (this node's or another
// leader's) are not in it, and its office counts from now.
func (n *Node) grantorOf(term uint64) *lease.Grantor {
	n.leases.grantMu.Lock()
	defer n.leases.grantMu.Unlock()
	switch {
	case n.leases.grantor == nil || term > n.leases.grantTerm:
		n.leases.grantor = lease.NewGrantor(n.leaseTerms(), time.Now())
		n.leases.grantTerm = term
	case term < n.leases.grantTerm:
		// A caller late from an earlier term (its grant fails its own
		// term check): a record of its own, which nothing keeps.
		return lease.NewGrantor(n.leaseTerms(), time.Now())
	}
	return n.leases.grantor
}

// leaseLoop renews this node's lease while Run runs. A grant counts only
// once the catalog has applied the index it came with, and after every
// served volume the catalog moved away has been fenced.
func (n *Node) leaseLoop(ctx context.Context) {
	every := n.leaseTerms().Renewal()
	t := time.NewTicker(every)
	defer t.Stop()
	held := false
	// A node starting has no lease until raft has a leader: its primaries
	// wait for one (their I/O waits in the gate) for startGrace before
	// they count as lost and refuse logins.
	n.leases.mu.Lock()
	n.leases.lapsedAt = time.Now().Add(startGrace)
	n.leases.mu.Unlock()
	for {
		asked := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 2*every)
		g, err := n.cluster.RenewLease(rctx)
		if err == nil {
			err = n.cluster.WaitApplied(rctx, g.Index)
		}
		cancel()
		if err == nil {
			n.fenceDeposed()
			n.leases.holder.Extend(asked, min(g.Duration, n.leaseTerms().Duration))
			n.leases.selfTerm.Store(g.Term)
			n.failLapsedReplicas(g.Lapsed)
		}
		now := time.Now()
		switch valid := n.leases.holder.Valid(now); {
		case valid && !held:
			n.log.Info("lease held", "node", n.cfg.Name, "for", n.leases.holder.Remaining(now).Round(time.Millisecond))
			n.leases.mu.Lock()
			n.leases.lapsedAt = time.Time{}
			n.leases.mu.Unlock()
			held = true
			n.wake()
		case !valid && held:
			n.log.Warn("lease lapsed: volumes this node is primary of wait (no I/O is served) until it is renewed", "node", n.cfg.Name, "err", err)
			n.leases.mu.Lock()
			n.leases.lapsedAt = now
			n.leases.mu.Unlock()
			held = false
		case !valid:
			n.leases.mu.Lock()
			if n.leases.lapsedAt.IsZero() {
				n.leases.lapsedAt = now
			}
			lapsed := now.Sub(n.leases.lapsedAt)
			n.leases.mu.Unlock()
			if lapsed >= n.leaseTerms().Wait() && lapsed < n.leaseTerms().Wait()+every {
				n.wake() // the reconciler stops serving primaries without a lease
			}
		}
		if e := n.leaseTerms().Renewal(); e != every {
			every = e
			t.Reset(every)
		}
		select {
		case <-ctx.Done():
			n.leases.holder.Drop()
			return
		case <-t.C:
		}
	}
}

// failLapsedReplicas stops every mirror served here from waiting for a
// replica on a node whose lease ended (frozen, cut off, dead) that has let
// a request wait a renewal period: its writes go on once it is dropped,
// instead of after the replica timeout. A replica that answers stays.
func (n *Node) failLapsedReplicas(lapsed []string) {
	if len(lapsed) == 0 {
		return
	}
	n.mu.Lock()
	var spreads []replication.Spread
	for _, s := range n.vols {
		if sp := s.spread(); sp != nil {
			spreads = append(spreads, sp)
		}
	}
	n.mu.Unlock()
	for _, sp := range spreads {
		for _, r := range sp.Replicas() {
			if slices.Contains(lapsed, r) {
				sp.Fail(r, n.leaseTerms().Renewal(), errLeaseEnded)
			}
		}
	}
}

// errLeaseEnded is why a replica is failed by failLapsedReplicas.
var errLeaseEnded = errors.New("its node's cluster lease ended (dead, frozen or cut off)")

// leaseLost reports whether the lease has been lapsed so long that the
// cluster may have promoted another node: primaries stop serving (their
// sessions closed, so that initiators try their other paths).
func (n *Node) leaseLost() bool {
	n.leases.mu.Lock()
	defer n.leases.mu.Unlock()
	return !n.leases.lapsedAt.IsZero() && time.Since(n.leases.lapsedAt) >= n.leaseTerms().Wait() &&
		!n.leases.holder.Valid(time.Now())
}

// freshCatalog returns nil if this node's catalog is known recent: it
// holds a lease, whose grant it applied the catalog up to. A node cut off
// from the majority waits a moment for one, then says its view may be
// stale rather than show it as the truth (a healed old primary would
// still list itself primary, in sync).
func (n *Node) freshCatalog(ctx context.Context) error {
	h := n.leases.holder
	ctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	for !h.Valid(time.Now()) {
		ch := h.Changed()
		if h.Valid(time.Now()) {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: node %s holds no lease from the cluster (cut off from the majority, or no leader): its catalog may be stale; ask another node",
				errUnavailable, n.cfg.Name)
		}
	}
	return nil
}

// fenceDeposed fences the gate of every volume served here as primary
// that the catalog no longer has primary here at that epoch.
func (n *Node) fenceDeposed() {
	st := n.cluster.State()
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, s := range n.vols {
		g := s.gate.Load()
		if g == nil || g.fenced.Load() {
			continue
		}
		// Only a newer epoch fences: a catalog read older than the gate
		// (a gate stored since, at the epoch that made this node primary)
		// must not close it for good. A deleted volume is unserved by the
		// reconciler; no other node serves it either.
		v, ok := st.Volumes[name]
		if !ok || v.ID != g.id || v.Epoch <= g.epoch {
			continue
		}
		g.fenced.Store(true)
		g.wake()
		n.log.Warn("no longer the primary: I/O stops", "volume", name, "epoch", g.epoch, "primary_now", v.Primary, "epoch_now", v.Epoch)
		n.wake()
	}
}

// gate is a served volume's replication.Lease: the node's lease, unless
// the catalog moved the volume away from this node's epoch.
type gate struct {
	n      *Node
	id     string // the volume's ID
	epoch  uint64
	fenced atomic.Bool
	mu     sync.Mutex
	woken  chan struct{} // closed by wake (fenced)
}

func newGate(n *Node, id string, epoch uint64) *gate {
	return &gate{n: n, id: id, epoch: epoch, woken: make(chan struct{})}
}

func (g *gate) wake() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.woken)
	g.woken = make(chan struct{})
}

// Await implements replication.Lease. A fenced gate never opens: the
// command waits until its session is closed (the reconciler unserves the
// volume), and the initiator retries it on another path.
func (g *gate) Await(ctx context.Context) error {
	h := g.n.leases.holder
	for {
		if !g.fenced.Load() && h.Valid(time.Now()) {
			return nil
		}
		changed := h.Changed()
		g.mu.Lock()
		woken := g.woken
		g.mu.Unlock()
		if !g.fenced.Load() && h.Valid(time.Now()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-woken:
		}
	}
}

// failoverLoop runs the controller's promotions while this node leads.
func (n *Node) failoverLoop(ctx context.Context) {
	t := time.NewTicker(failoverTick)
	defer t.Stop()
	warned := map[string]uint64{} // volume -> epoch warned about
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.cluster.IsLeader() {
			n.failoverPass(ctx, warned)
		}
	}
}

// failoverPass promotes, for each volume whose primary's lease has surely
// ended, the first in-sync replica whose node holds a lease, while this
// node leads the term whose grants it decides on.
func (n *Node) failoverPass(ctx context.Context, warned map[string]uint64) {
	term := n.cluster.Term()
	if !n.cluster.IsLeader() || n.cluster.Term() != term {
		return
	}
	g := n.grantorOf(term)
	if !g.Settled() {
		// Earlier leaders' grants count from their proofs, once every
		// entry of their terms is applied here; from taking office until.
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		e, err := n.cluster.EarlierGrants(sctx, term)
		cancel()
		if err != nil {
			n.log.Debug("earlier leaders' grants not read yet", "term", term, "err", err)
		} else {
			g.Settle(e)
		}
	}
	st := n.cluster.State()
	known := make([]string, 0, len(st.Nodes))
	for name := range st.Nodes {
		known = append(known, name)
	}
	n.leases.known.Store(&known)
	for key := range warned {
		if _, ok := st.Volumes[strings.TrimPrefix(key, "reprotect/")]; !ok {
			delete(warned, key)
		}
	}
	for _, name := range st.VolumeNames() {
		v := st.Volumes[name]
		if v.Primary == "" || !g.Ended(v.Primary, time.Now()) {
			continue
		}
		cand := n.candidate(st, v, g)
		if cand == "" {
			if warned[name] != v.Epoch {
				warned[name] = v.Epoch
				n.log.Error("volume has no primary and cannot fail over: no in-sync copy on a live node (it waits for one to come back)",
					"volume", name, "primary", v.Primary, "epoch", v.Epoch, "in_sync", v.InSync)
			}
			continue
		}
		if err := n.promote(ctx, term, g, st, v, cand); err != nil {
			if errors.Is(err, cluster.ErrNotLeader) {
				return // another leader decides now, on its own grants
			}
			n.log.Warn("failover not done; retrying", "volume", name, "from", v.Primary, "to", cand, "err", err)
			continue
		}
		delete(warned, name)
	}
	n.reprotectPass(ctx, term, g, st, warned)
}

// reprotectPass rebuilds copies of lost nodes elsewhere (N+1): a copy, not
// the primary's, on a node whose lease ended ReprotectAfter ago or more is
// removed from the placement, and replaced by one on an alive data node
// holding a lease, with room, that holds none of the volume (the fewest
// copies and most free space first). The
// primary then builds it in full, with progress in volume show and status.
// A volume with snapshots is left degraded (a copy is built from the live
// data only), with a warning.
func (n *Node) reprotectPass(ctx context.Context, term uint64, g *lease.Grantor, st cluster.State, warned map[string]uint64) {
	after := n.cfg.ReprotectAfter
	if after == 0 {
		after = DefaultReprotectAfter
	}
	now := time.Now()
	for _, name := range st.VolumeNames() {
		v := st.Volumes[name]
		if len(v.Snapshots) > 0 {
			continue
		}
		removed := false
		for _, p := range v.Placement {
			if p == v.Primary || g.EndedFor(p, now) < after || !g.Holds(v.Primary, now) {
				continue
			}
			if err := n.proposeAsLeader(ctx, term, cluster.RemoveCopy{Volume: name, Node: p}); err != nil {
				n.log.Warn("re-protection: the copy of a lost node not removed yet", "volume", name, "node", p, "err", err)
				return
			}
			n.log.Warn("re-protection: copy of a lost node removed, to be rebuilt elsewhere", "volume", name, "node", p,
				"lost_for", (g.EndedFor(p, now) + n.leaseTerms().Wait()).Round(time.Second))
			removed = true
			st = n.cluster.State()
			v = st.Volumes[name]
		}
		// Only a copy re-protection itself removed is replaced: one an
		// administrator removed (remove-copy) stays removed.
		if !removed || len(v.Placement) >= v.Copies || !g.Holds(v.Primary, now) {
			continue
		}
		spare := n.spare(st, v, g, now)
		if spare == "" {
			if warned["reprotect/"+name] != v.Epoch+1 {
				warned["reprotect/"+name] = v.Epoch + 1
				n.log.Error("re-protection: no alive data node with room for a new copy; the volume stays degraded",
					"volume", name, "copies", len(v.Placement), "wanted", v.Copies)
			}
			continue
		}
		if err := n.proposeAsLeader(ctx, term, cluster.AddCopy{Volume: name, Node: spare}); err != nil {
			n.log.Warn("re-protection: new copy not placed yet", "volume", name, "node", spare, "err", err)
			return
		}
		delete(warned, "reprotect/"+name)
		n.log.Warn("re-protection: new copy placed; the primary builds it", "volume", name, "node", spare)
		n.wake()
	}
}

// spare picks the node for a new copy of v: an alive data node holding a
// lease, with room (as place counts it), holding no copy of v; the one
// with the fewest copies, then the most free space. "" if none.
func (n *Node) spare(st cluster.State, v cluster.Volume, g *lease.Grantor, now time.Time) string {
	held := map[string]int{}
	for _, x := range st.Volumes {
		for _, p := range x.Placement {
			held[p]++
		}
	}
	best, bestFree := "", int64(0)
	for _, m := range n.dataNodes(st) {
		if v.Holds(m.Name) || !g.Holds(m.Name, now) || m.Meta.FreeBytes < min(v.Size, 1<<30) {
			continue
		}
		if best == "" || held[m.Name] < held[best] || held[m.Name] == held[best] && m.Meta.FreeBytes > bestFree {
			best, bestFree = m.Name, m.Meta.FreeBytes
		}
	}
	return best
}

// proposeAsLeader commits cmd as the leader of term, waiting at most 5 s:
// the controller's decisions, taken on that term's grants.
func (n *Node) proposeAsLeader(ctx context.Context, term uint64, cmd cluster.Command) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := n.cluster.ProposeAsLeader(ctx, term, cmd)
	return err
}

// candidate is the first in-sync replica of v on a data node that holds a
// lease g granted, "" if none.
func (n *Node) candidate(st cluster.State, v cluster.Volume, g *lease.Grantor) string {
	now := time.Now()
	for _, c := range v.InSync {
		if node, ok := st.Nodes[c]; c != v.Primary && ok && node.Role == cluster.RoleData && g.Holds(c, now) {
			return c
		}
	}
	return ""
}

// promote makes cand the primary of v in place of v.Primary, whose lease g
// (the grants of this node's term of office term) says has ended. No lease
// is granted from the check until the promotion is applied here, or known
// never to commit, or this node no longer leads term (a later leader's
// grants carry an index past anything this one committed).
func (n *Node) promote(ctx context.Context, term uint64, g *lease.Grantor, st cluster.State, v cluster.Volume, cand string) error {
	n.leases.promoteMu.Lock()
	defer n.leases.promoteMu.Unlock()
	start := time.Now()
	if !g.Ended(v.Primary, start) || n.candidate(st, v, g) != cand { // a grant came in meanwhile
		return nil
	}
	err := n.proposeAsLeader(ctx, term, cluster.SetPrimary{Volume: v.Name, Node: cand, Epoch: v.Epoch, Failover: true})
	if errors.Is(err, cluster.ErrOutcomeUnknown) {
		// It may still commit: grants wait until it is applied here or
		// this node no longer leads.
		if serr := n.cluster.Settle(ctx, term); serr != nil {
			return fmt.Errorf("promoting %s: %w (and then: %w)", cand, err, serr)
		}
		if cur := n.cluster.State().Volumes[v.Name]; cur.Epoch > v.Epoch && cur.Primary == cand {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("promoting %s: %w", cand, err)
	}
	n.log.Warn("failover: replica promoted in place of a primary whose lease ended", "volume", v.Name, "from", v.Primary, "to", cand,
		"epoch", v.Epoch+1, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// floatTick is how often floatingLoop checks whether it should hold the
// address; floatMargin is how long before its lease ends a holder gives
// it up.
const (
	floatTick   = 100 * time.Millisecond
	floatMargin = 50 * time.Millisecond
)

// floatingLoop holds the floating portal address while this node leads
// raft with a lease it granted itself, once every earlier leader's lease
// has surely ended (the previous holder, if alive but cut off, has given it
// up by then; lease.Grantor.LeadersEnded), and
// serves the portal on it unless the portal already listens on every
// address; otherwise it gives it up, also when a killed earlier run of
// this node left it on the interface, and when Run ends. (A frozen holder
// still holds it in its kernel until it resumes and gives it up.)
func (n *Node) floatingLoop(ctx context.Context, a *floating.Address) {
	host, port, _ := net.SplitHostPort(n.cfg.Portal)
	wildcard := host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified()
	addr := net.JoinHostPort(a.Addr().String(), port)
	var ln net.Listener
	var served chan struct{} // closed when the floating listener's Serve returns
	release := func() {
		if ln != nil {
			ln.Close()
			<-served
			ln = nil
		}
		if err := a.Release(); err != nil {
			n.log.Warn("floating address not released", "addr", addr, "err", err)
		} else {
			n.log.Info("floating address released", "addr", addr)
		}
	}
	defer func() {
		if a.Held() || ln != nil {
			release()
		}
	}()
	t := time.NewTimer(floatTick)
	defer t.Stop()
	for tick := 0; ; tick++ {
		now := time.Now()
		should := false
		// The address is given up floatMargin before the lease ends: the
		// next holder takes it Wait (a little over a lease) after the
		// lease's proof, and a check only every tick would overlap.
		left := n.leases.holder.Remaining(now) - floatMargin
		if term := n.cluster.Term(); n.cluster.IsLeader() && left > 0 && n.leases.selfTerm.Load() == term {
			// A holder holds it only while it leads with a lease it
			// granted itself (so it is among the leaders of the proofs);
			// the previous one's has ended by then.
			should = n.grantorOf(term).LeadersEnded(n.cfg.Name, now)
		}
		if ln != nil {
			select {
			case <-served: // the portal stopped on it (too many files?): take it again
				ln = nil
			default:
			}
		}
		switch {
		case should && (!a.Held() || !wildcard && ln == nil):
			if err := a.Hold(); err != nil {
				n.log.Warn("floating address not taken", "addr", addr, "err", err)
				break
			}
			if wildcard {
				n.log.Info("floating address held (the portal listens on every address)", "addr", addr)
				break
			}
			l, err := net.Listen("tcp", addr)
			if err != nil {
				n.log.Warn("floating address not served: its portal cannot listen there; given up", "addr", addr, "err", err)
				release()
				break
			}
			ln, served = l, make(chan struct{})
			done := served
			n.log.Info("floating address held", "addr", addr)
			n.goRun(func() {
				defer close(done)
				if err := n.iscsi.Serve(l); err != nil && !errors.Is(err, iscsi.ErrServerClosed) && ctx.Err() == nil {
					n.log.Debug("floating portal stopped", "addr", addr, "err", err)
				}
			})
		case !should && (a.Held() || ln != nil):
			release()
		case !should && tick%10 == 0:
			// Left on the interface by a run of this node that was killed.
			if on, err := a.OnInterface(); err == nil && on {
				n.log.Warn("floating address found on the interface while this node does not hold it (left by a killed run?): removing it", "addr", addr)
				release()
			}
		}
		wait := floatTick
		if should && left < wait {
			wait = left // wake to give it up in time
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
