package appliance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/replication"
	"tandem.io/tandem/target/iscsi"
	"tandem.io/tandem/target/scsi"
	"tandem.io/tandem/volume"
)

// The reconciler makes what this node holds and serves follow the catalog.
// It runs on every node, after every catalog change and once a second:
//
//   - a volume placed here gets its local copy, with the identity the
//     catalog holds (a clone is made from the local copy of its source's
//     snapshot); a copy smaller than the catalog's size grows; local
//     snapshots the catalog no longer names are merged away;
//   - the volume's primary serves its target over a replication.Mirror of
//     its local copy and the replicas; every other data node serves the
//     target's port too, standby or unavailable (ALUA, alua.go), and
//     redirects logins that arrive at the floating address to the
//     primary;
//   - a local copy of a volume the catalog deleted, or no longer places
//     here, is deleted.
//
// Each volume has a slot (served) whose lock the reconciler and the
// operations the primary runs (snapshot, revert, resize, move, verify)
// take, so that they never act on a volume at once; the reconciler skips a
// busy volume and comes back to it.

// spreadRef holds a Spread for an atomic pointer.
type spreadRef struct{ replication.Spread }

// spread is the Spread serving the volume here now, nil if none.
func (s *served) spread() replication.Spread {
	if r := s.current.Load(); r != nil {
		return r.Spread
	}
	return nil
}

// reconcileWorkers is how many volumes a reconciliation pass handles at
// once.
const reconcileWorkers = 4

// role is what this node does for a volume.
type role int

const (
	roleNone        role = iota
	rolePrimary          // serves the target over a mirror
	roleStandby          // serves the target's port, standby or unavailable (alua.go)
	roleRedirect         // logins go to the primary's portal (a node without a port number)
	roleUnavailable      // listed, logins refused with the reason
)

// served is this node's part in one volume.
type served struct {
	mu   chan struct{} // the volume's lock: a channel, so that the reconciler can skip a busy one
	name string
	id   string
	role role
	// epoch is the epoch the mirror writes with (rolePrimary).
	epoch  uint64
	mirror replication.Spread
	// current is mirror, and refused the reason logins are refused (if
	// they are), for readers that do not take the lock (status, metrics).
	current atomic.Pointer[spreadRef]
	refused atomic.Pointer[string]
	// gate is the mirror's lease gate (rolePrimary), nil otherwise.
	gate atomic.Pointer[gate]
	// servedEpoch is the epoch the target is served at, 0 when it is not
	// served here as the primary.
	servedEpoch atomic.Uint64
	naa         [16]byte
	// lu and dev are the logical unit this node serves for the volume and
	// its medium (rolePrimary, roleStandby); reservations is the catalog's
	// reservation state a standby unit last loaded.
	lu           *scsi.LogicalUnit
	dev          *portDevice
	reservations string
	// portal is where logins are redirected (roleRedirect); why is the
	// reason logins are refused (roleUnavailable).
	portal, why string
	// lastErr is the last reconciliation error logged, so that a lasting
	// one is logged once.
	lastErr string

	// idMu protects copyIDs: the copy ID of each replica's copy the
	// mirror writes to, as the catalog had it when the mirror took the
	// replica on (Rejoin names it in MarkInSync, so a copy made again
	// meanwhile is never marked in sync).
	idMu    sync.Mutex
	copyIDs map[string]string
}

// dropGate closes the slot's lease gate for good and forgets it: I/O
// waiting in it waits until its session is closed. s is locked.
func (s *served) dropGate() {
	if g := s.gate.Swap(nil); g != nil {
		g.fenced.Store(true)
		g.wake()
	}
}

func (s *served) copyID(replica string) string {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	return s.copyIDs[replica]
}

func (s *served) setCopyID(replica, id string) {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if s.copyIDs == nil {
		s.copyIDs = map[string]string{}
	}
	s.copyIDs[replica] = id
}

func (s *served) lock(ctx context.Context) error {
	select {
	case s.mu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *served) tryLock() bool {
	select {
	case s.mu <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s *served) unlock() { <-s.mu }

// slot returns the volume's slot, made on first use.
func (n *Node) slot(name string) *served {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.vols[name]
	if s == nil {
		s = &served{name: name, mu: make(chan struct{}, 1)}
		n.vols[name] = s
	}
	return s
}

// takeSlot locks s for a reconciliation pass, unless it is busy or no
// longer its volume's slot: forgotten while the pass waited for a worker
// (DeleteVolume drops a slot at once), where serving would leave a target
// and a mirror no pass ever looks at again. A slot leaves n.vols only
// locked (dropGoneSlot), so one found there stays until it is unlocked.
func (n *Node) takeSlot(s *served) bool {
	if !s.tryLock() {
		return false
	}
	n.mu.Lock()
	current := n.vols[s.name] == s
	n.mu.Unlock()
	if !current {
		s.unlock()
	}
	return current
}

// wake asks the reconciler for a pass soon.
func (n *Node) wake() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

func (n *Node) reconcileLoop(ctx context.Context) {
	// A restarted node's catalog is replayed only once raft hears from a
	// leader: act on nothing before this node has everything committed.
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := n.cluster.Sync(sctx)
		cancel()
		if err == nil {
			break
		}
		n.log.Debug("catalog not caught up yet", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		n.reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		case <-t.C:
		}
	}
}

// reconcile is one pass over the catalog.
func (n *Node) reconcile(ctx context.Context) {
	st := n.cluster.State()
	if st.ClusterID == "" {
		return // not (yet) part of a cluster: nothing is known
	}
	n.setTargetPort(st)
	// A few volumes at once: a mirror waiting for an unreachable replica
	// does not hold up the others.
	sem := make(chan struct{}, reconcileWorkers)
	var wg sync.WaitGroup
	for name, v := range st.Volumes {
		s := n.slot(name)
		sem <- struct{}{}
		if !n.takeSlot(s) {
			<-sem
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := n.reconcileVolume(ctx, st, v, s)
			n.logOnce(s, err)
			s.unlock()
		}()
	}
	wg.Wait()
	// Slots of volumes the catalog no longer has.
	n.mu.Lock()
	var gone []*served
	for _, s := range n.vols {
		gone = append(gone, s)
	}
	n.mu.Unlock()
	for _, s := range gone {
		if !s.tryLock() {
			continue
		}
		n.dropGoneSlot(st, s)
		s.unlock()
	}
	n.dropLocalCopies(ctx, st)
	if _, ok := st.Nodes[n.cfg.Name]; ok {
		n.ready.Store(true)
	}
}

// dropGoneSlot stops serving s, locked, and forgets it if the catalog st
// no longer has its volume (or has another volume by that name).
func (n *Node) dropGoneSlot(st cluster.State, s *served) {
	if v, ok := st.Volumes[s.name]; ok && (s.id == "" || v.ID == s.id) {
		return
	}
	n.unserve(s)
	n.mu.Lock()
	if n.vols[s.name] == s {
		delete(n.vols, s.name)
	}
	n.mu.Unlock()
}

// background runs fn, a long local operation on a volume's copy (a
// merge, a deletion), in a goroutine Run waits for, unless one runs for
// that volume already: the reconciler never waits for one.
func (n *Node) background(volume string, fn func()) {
	n.mu.Lock()
	if n.busy[volume] {
		n.mu.Unlock()
		return
	}
	n.busy[volume] = true
	n.mu.Unlock()
	n.goRun(func() {
		defer func() {
			n.mu.Lock()
			delete(n.busy, volume)
			n.mu.Unlock()
			n.wake()
		}()
		fn()
	})
}

func (n *Node) logOnce(s *served, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if msg != s.lastErr {
		if err != nil {
			n.log.Warn("volume not in the state the catalog asks for; retrying", "volume", s.name, "err", err)
		} else if s.lastErr != "" {
			n.log.Info("volume reconciled", "volume", s.name)
		}
		s.lastErr = msg
	}
}

// reconcileVolume brings this node's part in v in line; s is locked.
func (n *Node) reconcileVolume(ctx context.Context, st cluster.State, v cluster.Volume, s *served) error {
	self := n.cfg.Name
	placed := slices.Contains(v.Placement, self)
	if placed {
		if err := n.ensureCopy(ctx, v); err != nil {
			if v.Primary == self {
				n.serveUnavailable(s, v, err.Error())
			}
			return err
		}
	}
	if v.Primary == self && placed {
		if n.leaseLost() {
			n.serveUnavailable(s, v, "this node lost its cluster lease: the volume may be served by another node now")
			return nil
		}
		return n.servePrimary(ctx, st, v, s)
	}
	if n.port.Load() != 0 {
		return n.serveStandby(s, st, v)
	}
	node, ok := st.Nodes[v.Primary]
	if !ok || node.Portal == "" {
		n.serveUnavailable(s, v, fmt.Sprintf("the primary %q is not known to the catalog", v.Primary))
		return nil
	}
	return n.serveRedirect(s, v, node.Portal)
}

// ensureCopy makes the local copy of v match the catalog: present, with
// its identity, at least its size, without snapshots the catalog dropped.
func (n *Node) ensureCopy(ctx context.Context, v cluster.Volume) error {
	info, err := n.store.Get(v.Name)
	if errors.Is(err, volume.ErrNotFound) {
		spec := volume.Spec{Name: v.Name, Size: v.Size,
			Identity: volume.Identity{ID: v.ID, NAA: v.NAA, Serial: v.Serial, Created: v.Created}}
		if v.Source != nil {
			_, err = n.store.Clone(ctx, v.Source.Volume, v.Source.Snapshot, spec)
		} else {
			_, err = n.store.Create(ctx, spec)
		}
		if err != nil {
			return fmt.Errorf("making the local copy: %w", err)
		}
		n.log.Info("local copy made", "volume", v.Name, "id", v.ID)
		return nil
	}
	if err != nil {
		return err
	}
	if info.ID != v.ID {
		return fmt.Errorf("the local volume %q has ID %s, the catalog's has %s: delete or rename the local one", v.Name, info.ID, v.ID)
	}
	if info.Error != "" {
		return fmt.Errorf("the local copy is damaged: %s", info.Error)
	}
	if n.owes(info.ID) {
		cid, err := n.payRenewal(v.Name, info.ID, min(n.renewWaitOr(), 5*time.Second))
		if err != nil {
			return fmt.Errorf("giving the local copy (deposed as primary) a new copy ID: %w", err)
		}
		info.CopyID = cid
	}
	if known := v.CopyIDs[n.cfg.Name]; known != info.CopyID && n.mayPropose("copy/"+v.Name+"/"+info.CopyID) {
		// A copy made here the catalog does not know yet (new), or one
		// made again (a replaced disk): the catalog records it, and takes
		// a replaced replica out of the in-sync set; a replaced primary's
		// is refused (it must not serve an empty copy as the volume).
		if _, err := n.cluster.Propose(ctx, cluster.SetCopyID{Volume: v.Name, Node: n.cfg.Name, CopyID: info.CopyID}); err != nil {
			if definiteRefusal(err) {
				n.refused("copy/" + v.Name + "/" + info.CopyID)
			}
			return fmt.Errorf("recording the local copy %s: %w", info.CopyID, err)
		}
		if known != "" {
			n.log.Warn("the local copy is not the one the catalog knew (a replaced disk?): it is rebuilt in full", "volume", v.Name,
				"copy", info.CopyID, "was", known)
		}
	}
	if info.Size < v.Size {
		if _, err := n.store.Resize(ctx, v.Name, v.Size); err != nil {
			return fmt.Errorf("growing the local copy to %d bytes: %w", v.Size, err)
		}
	}
	for _, ls := range info.Snapshots {
		if slices.ContainsFunc(v.Snapshots, func(cs cluster.Snapshot) bool { return cs.Name == ls.Name }) {
			continue
		}
		if time.Since(ls.Created) >= 2*time.Minute {
			// Make sure the catalog is current before dropping data.
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := n.cluster.Sync(sctx)
			cancel()
			if err != nil {
				return nil
			}
			if cur, ok := n.cluster.State().Volumes[v.Name]; !ok || slices.ContainsFunc(cur.Snapshots, func(cs cluster.Snapshot) bool { return cs.Name == ls.Name }) {
				continue
			}
		}
		// A snapshot being taken is on the copies a moment before the
		// catalog names it: only an old one is dropped. (A deleted one
		// is merged at once, by DeleteSnapshot; this catches a node that
		// was down then.)
		if time.Since(ls.Created) < 2*time.Minute {
			continue
		}
		name, snap := v.Name, ls.Name
		n.background(name, func() {
			if err := n.store.DeleteSnapshot(n.ctx, name, snap); err != nil && !errors.Is(err, volume.ErrNotFound) {
				n.log.Warn("a snapshot the catalog no longer has could not be dropped yet", "volume", name, "snapshot", snap, "err", err)
				return
			}
			n.log.Info("snapshot dropped from the local copy", "volume", name, "snapshot", snap)
		})
	}
	return nil
}

// copyUsable says why this node's copy of v cannot stand for the volume
// (as the primary's copy, or as a replica taking writes): not the copy the
// catalog knows, or missing a snapshot the catalog has (or holding another
// snapshot under its name). nil when it can.
func (n *Node) copyUsable(v cluster.Volume) error {
	info, err := n.store.Get(v.Name)
	if err != nil {
		return err
	}
	if info.ID != v.ID {
		return fmt.Errorf("the local volume %q is another volume (ID %s, the catalog's %s)", v.Name, info.ID, v.ID)
	}
	if n.owes(info.ID) {
		return fmt.Errorf("the local copy of volume %q was deposed as primary and has no new copy ID yet", v.Name)
	}
	if known := v.CopyIDs[n.cfg.Name]; known != info.CopyID {
		return fmt.Errorf("the local copy %s of volume %q is not the one the catalog knows (%q)", info.CopyID, v.Name, known)
	}
	for _, cs := range v.Snapshots {
		if cs.Pending {
			continue
		}
		i := slices.IndexFunc(info.Snapshots, func(ls volume.SnapshotInfo) bool { return ls.Name == cs.Name })
		if i < 0 {
			return fmt.Errorf("the local copy of volume %q lacks snapshot %q (rebuilding a copy with its snapshots is not supported: delete the snapshot, or remove this copy)", v.Name, cs.Name)
		}
		if id := info.Snapshots[i].ID; id != cs.ID {
			return fmt.Errorf("the local copy of volume %q holds another snapshot under the name %q (ID %s, the catalog's %s)", v.Name, cs.Name, id, cs.ID)
		}
	}
	return nil
}

// dropLocalCopies deletes local copies the catalog deleted or placed
// elsewhere. A local volume the catalog never knew is left alone (and
// reported once at start): it is not this node's to delete.
func (n *Node) dropLocalCopies(ctx context.Context, st cluster.State) {
	for _, info := range n.store.List() {
		v, ok := st.Volumes[info.Name]
		switch {
		case ok && v.ID == info.ID && slices.Contains(v.Placement, n.cfg.Name):
			continue
		case ok && v.ID == info.ID:
			// Placed elsewhere now (remove-copy).
		case st.Deleted(info.ID):
		default:
			continue
		}
		s := n.slot(info.Name)
		if !s.tryLock() {
			continue
		}
		if s.role == rolePrimary && s.id == info.ID {
			n.unserve(s)
		}
		s.unlock()
		name, id := info.Name, info.ID
		n.background(name, func() {
			err := n.store.Delete(n.ctx, name, func() error {
				// Still not the catalog's (the volume might be back), and
				// still the copy listed: a volume made again by that name
				// meanwhile has a copy of its own here.
				if cur := n.cluster.State(); cur.Volumes[name].ID == id && slices.Contains(cur.Volumes[name].Placement, n.cfg.Name) {
					return fmt.Errorf("volume %q is placed here again", name)
				}
				if local, err := n.store.Get(name); err == nil && local.ID != id {
					return fmt.Errorf("the local copy of volume %q is another volume's now (%s, not %s)", name, local.ID, id)
				}
				return nil
			})
			if err != nil {
				n.log.Warn("a local copy the catalog dropped could not be deleted yet", "volume", name, "err", err)
				return
			}
			n.setOwed(id, false)
			n.log.Info("local copy deleted", "volume", name, "id", id)
		})
	}
}

// servePrimary serves v's target over a mirror at v's epoch; s is locked.
// st is the catalog v is from.
func (n *Node) servePrimary(ctx context.Context, st cluster.State, v cluster.Volume, s *served) error {
	self := n.cfg.Name
	if s.role == rolePrimary && s.epoch == v.Epoch && s.id == v.ID && v.Pending == "" {
		if g := s.gate.Load(); g == nil || !g.fenced.Load() {
			if s.lu != nil && n.port.Load() != 0 {
				// The pass's catalog: a copy per volume and pass
				// would cost O(volumes²) each second.
				s.lu.SetPortGroups(n.portGroups(st, v, scsi.ActiveOptimized))
			}
			return n.followPlacement(s, v)
		}
		// Fenced, yet the catalog has this node primary at this epoch
		// still: never expected (fenceDeposed fences only for a newer
		// epoch); serve it again rather than leave its I/O waiting.
		n.log.Warn("volume's I/O gate was closed while this node is its primary at that epoch; serving it again", "volume", v.Name, "epoch", v.Epoch)
	}
	// A standby port of this volume becomes the primary's in place: its
	// sessions carry on, transitioning until the mirror is attached.
	inPlace := s.role == roleStandby && s.id == v.ID && s.lu != nil
	if inPlace {
		s.lu.SetPortGroups(n.portGroups(n.cluster.State(), v, scsi.Transitioning))
	} else {
		n.unserve(s)
	}
	if err := n.copyUsable(v); err != nil {
		n.serveUnavailable(s, v, err.Error())
		return err
	}
	dev, err := n.store.DeviceByID(v.ID)
	if err != nil {
		return err
	}
	// Dirty maps this node kept as the primary of an earlier term miss
	// what later primaries wrote: at a new term, replicas out of sync are
	// rebuilt in full (the activity log stays: it is this copy's own).
	if de, err := n.store.DirtyEpoch(v.ID); err != nil {
		return err
	} else if de != v.Epoch {
		if err := n.store.StartDirtyEpoch(v.ID, v.Epoch, replication.ActivityLog); err != nil {
			return err
		}
	}
	if acc, err := n.store.AcceptedEpoch(v.ID); err != nil {
		return err
	} else if acc > v.Epoch {
		return fmt.Errorf("this node accepted epoch %d from another primary; the catalog's epoch %d is older: waiting for the catalog", acc, v.Epoch)
	}
	// Fence every stream a former primary has open to this copy before
	// serving it (replication.Server.RaiseEpoch).
	if err := n.repl.RaiseEpoch(v.ID, v.Epoch); err != nil {
		return fmt.Errorf("accepting epoch %d: %w", v.Epoch, err)
	}
	inSync, outOfSync, full, err := n.replicaSets(v)
	if err != nil {
		return err
	}
	name, epoch := v.Name, v.Epoch
	s.idMu.Lock()
	s.copyIDs = map[string]string{}
	for r, id := range v.CopyIDs {
		s.copyIDs[r] = id
	}
	s.idMu.Unlock()
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	g := newGate(n, v.ID, v.Epoch)
	var lease replication.Lease = g
	if n.noGate.Load() {
		lease = nil
	}
	m, err := replication.NewMirror(mctx, replication.MirrorConfig{
		VolumeID: v.ID, Epoch: v.Epoch, Self: self, Local: dev, Lease: lease,
		InSync: inSync, OutOfSync: outOfSync, FullRebuild: full,
		Dialer: replDialer{n}, Dirty: storeDirty{n.store},
		Drop: func(ctx context.Context, replica string) error {
			_, err := n.cluster.Propose(ctx, cluster.DropReplica{Volume: name, Epoch: epoch, By: self, Node: replica})
			if err == nil {
				n.log.Warn("replica dropped from the in-sync set", "volume", name, "replica", replica, "epoch", epoch)
			}
			return err
		},
		Rejoin: func(ctx context.Context, replica string) error {
			id := s.copyID(replica)
			if id == "" {
				return fmt.Errorf("the copy of volume %q on %s is not known to the catalog yet", name, replica)
			}
			_, err := n.cluster.Propose(ctx, cluster.MarkInSync{Volume: name, Epoch: epoch, By: self, Node: replica, CopyID: id})
			if err == nil {
				n.log.Info("replica in sync", "volume", name, "replica", replica, "epoch", epoch)
			}
			return err
		},
		Logger: n.log.With("volume_name", v.Name),
	})
	if err != nil {
		return fmt.Errorf("starting the mirror: %w", err)
	}
	// An operation in the write stream a former term of this primary
	// left unfinished (it crashed mid-revert) is done again, on every
	// copy, before anything is served.
	if err := n.finishPending(mctx, v, m); err != nil {
		m.Close()
		return err
	}
	for _, cs := range v.Snapshots {
		if cs.Pending {
			// A snapshot a former term did not finish: drop it.
			n.log.Warn("dropping a snapshot that was never completed", "volume", v.Name, "snapshot", cs.Name)
			if _, err := n.cluster.Propose(mctx, cluster.DeleteSnapshot{Volume: v.Name, Name: cs.Name}); err != nil {
				n.log.Warn("an uncompleted snapshot could not be dropped yet", "volume", v.Name, "snapshot", cs.Name, "err", err)
			}
		}
	}
	// The gate is where fenceDeposed finds it before the catalog is looked
	// at again: a promotion applied before this look fences it here, one
	// applied after it is fenced by the lease loop before its next grant
	// counts.
	s.gate.Store(g)
	if cur, ok := n.cluster.State().Volumes[v.Name]; !ok || cur.ID != v.ID || cur.Primary != self || cur.Epoch != v.Epoch {
		s.gate.Store(nil)
		m.Close()
		return fmt.Errorf("the catalog moved the volume on while its mirror started (primary %s, epoch %d)", cur.Primary, cur.Epoch)
	}
	fail := func(err error) error {
		s.gate.Store(nil)
		m.Close()
		return err
	}
	served := meteredSender{n.metrics.wrap(v.Name, m)}
	lu, port := s.lu, s.dev
	if inPlace {
		// The catalog's reservations, as the former primary left them.
		if err := lu.ReloadReservations(); err != nil {
			return fail(err)
		}
		s.epoch = v.Epoch
		s.servedEpoch.Store(v.Epoch) // reservations commit at this epoch
		port.attach(served)
	} else {
		port = &portDevice{}
		port.attach(served)
		lu, err = scsi.NewLogicalUnit(scsi.LUConfig{Device: port, NAA: v.NAA, Serial: v.Serial, Logger: n.log,
			Reservations: catalogReservations{n: n, volume: v.Name, s: s}, Copy: n})
		if err != nil {
			return fail(err)
		}
		if n.port.Load() != 0 {
			lu.SetPortGroups(n.portGroups(n.cluster.State(), v, scsi.ActiveOptimized))
		}
		t, err := scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LogicalUnit{0: lu}, Logger: n.log})
		if err != nil {
			return fail(err)
		}
		s.epoch = v.Epoch
		s.servedEpoch.Store(v.Epoch)
		if err := n.iscsi.AddTarget(n.targetConfig(v, t)); err != nil {
			s.servedEpoch.Store(0)
			return fail(err)
		}
		n.lusMu.Lock()
		n.targets[v.Name] = t
		n.lusMu.Unlock()
	}
	n.lusMu.Lock()
	n.lus[v.NAA] = servedLU{lu: lu, iqn: n.iqn(v.Name)}
	n.lusMu.Unlock()
	s.id, s.role, s.epoch, s.mirror, s.naa, s.lu, s.dev = v.ID, rolePrimary, v.Epoch, m, v.NAA, lu, port
	s.current.Store(&spreadRef{m})
	if inPlace {
		lu.SetPortGroups(n.portGroups(n.cluster.State(), v, scsi.ActiveOptimized))
	}
	n.log.Info("serving volume as primary", "volume", v.Name, "epoch", v.Epoch, "in_sync", inSync, "resync", outOfSync, "rebuild", full)
	return nil
}

// replicaSets splits v's replicas: in sync; out of sync with a dirty map
// here (incremental resync); out of sync without one (full rebuild).
func (n *Node) replicaSets(v cluster.Volume) (inSync, outOfSync, full []string, err error) {
	dirty, err := n.store.DirtyReplicas(v.ID)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, r := range v.Placement {
		switch {
		case r == n.cfg.Name:
		case slices.Contains(v.InSync, r):
			inSync = append(inSync, r)
		case slices.Contains(dirty, r):
			outOfSync = append(outOfSync, r)
		default:
			full = append(full, r)
		}
	}
	return inSync, outOfSync, full, nil
}

// followPlacement tells a running mirror of copies added to or removed
// from the placement.
func (n *Node) followPlacement(s *served, v cluster.Volume) error {
	m := s.mirror
	have := m.Replicas()
	for _, r := range have {
		cid := v.CopyIDs[r]
		switch known := s.copyID(r); {
		case cid == "" || cid == known:
		case known == "":
			s.setCopyID(r, cid) // first report of a new copy
		default:
			// The replica's copy was made again: whatever the mirror
			// knew of it (in sync, dirty regions) is of another copy.
			n.log.Warn("a replica's copy was made again; rebuilding it in full", "volume", v.Name, "replica", r, "copy", cid, "was", known)
			if err := m.RemoveReplica(r); err != nil {
				return err
			}
			s.setCopyID(r, cid)
			if err := m.AddReplica(r, true); err != nil {
				return err
			}
		}
	}
	for _, r := range v.Placement {
		if r != n.cfg.Name && !slices.Contains(have, r) {
			s.setCopyID(r, v.CopyIDs[r])
			dirty, err := n.store.DirtyReplicas(v.ID)
			if err != nil {
				return err
			}
			if err := m.AddReplica(r, !slices.Contains(dirty, r)); err != nil {
				return err
			}
		}
	}
	for _, r := range have {
		if !slices.Contains(v.Placement, r) {
			if err := m.RemoveReplica(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// serveRedirect lists v's target here with logins redirected to portal.
func (n *Node) serveRedirect(s *served, v cluster.Volume, portal string) error {
	if s.role == roleRedirect && s.portal == portal && s.id == v.ID {
		return nil
	}
	n.unserve(s)
	if err := n.iscsi.AddTarget(iscsi.TargetConfig{Name: n.iqn(v.Name), Redirect: portal,
		Auth: iscsi.Auth{AllowedInitiators: v.Export.Allow}}); err != nil {
		return err
	}
	s.id, s.role, s.portal = v.ID, roleRedirect, portal
	return nil
}

// serveUnavailable lists v's target here with logins refused: why says why.
func (n *Node) serveUnavailable(s *served, v cluster.Volume, why string) {
	if s.role == roleUnavailable && s.why == why {
		return
	}
	n.unserve(s)
	if err := n.iscsi.AddTarget(iscsi.TargetConfig{Name: n.iqn(v.Name), Unavailable: why,
		Auth: iscsi.Auth{AllowedInitiators: v.Export.Allow}}); err != nil {
		n.log.Error("volume has no target", "volume", v.Name, "err", err)
		return
	}
	s.id, s.role, s.why = v.ID, roleUnavailable, why
	s.refused.Store(&why)
}

// unserve stops whatever s serves: the target (its sessions are closed and
// their commands finished), then the mirror. s is locked.
func (n *Node) unserve(s *served) {
	if s.role == roleNone {
		return
	}
	if s.role == rolePrimary || s.role == roleStandby {
		n.lusMu.Lock()
		delete(n.lus, s.naa)
		delete(n.targets, s.name)
		n.lusMu.Unlock()
	}
	if err := n.iscsi.RemoveTarget(n.iqn(s.name)); err != nil && !errors.Is(err, iscsi.ErrNoSuchTarget) {
		n.log.Warn("target not removed", "volume", s.name, "err", err)
	}
	s.dropGate()
	if s.mirror != nil {
		// Deposed, or superseded without knowing it (its stream to the new
		// primary failed otherwise than by StaleEpoch: a write then reached
		// this copy alone before it failed on the drop the catalog refused).
		deposed := s.mirror.Deposed()
		if cur, ok := n.cluster.State().Volumes[s.name]; ok && cur.ID == s.id && cur.Epoch > s.epoch {
			deposed = true
		}
		if err := s.mirror.Close(); err != nil {
			n.log.Warn("mirror did not close cleanly", "volume", s.name, "err", err)
		}
		n.metrics.forget(s.name)
		if deposed {
			n.renewCopy(s.name)
		}
	}
	s.current.Store(nil)
	if s.dev != nil {
		s.dev.detach()
	}
	s.role, s.mirror, s.epoch, s.portal, s.why = roleNone, nil, 0, "", ""
	s.lu, s.dev, s.reservations = nil, nil, ""
	s.refused.Store(nil)
	s.current.Store(nil)
	s.servedEpoch.Store(0)
}

// unserveAll stops serving every volume (shutdown).
func (n *Node) unserveAll() {
	n.mu.Lock()
	slots := make([]*served, 0, len(n.vols))
	for _, s := range n.vols {
		slots = append(slots, s)
	}
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, s := range slots {
		if err := s.lock(ctx); err != nil {
			n.log.Warn("volume still busy at shutdown; its target and mirror close with the node", "volume", s.name)
			continue
		}
		n.unserve(s)
		s.unlock()
	}
}

func iscsiAuth(e cluster.Export) iscsi.Auth {
	return iscsi.Auth{CHAPUser: e.CHAPUser, CHAPSecret: e.CHAPSecret, MutualUser: e.MutualUser, MutualSecret: e.MutualSecret,
		AllowedInitiators: e.Allow}
}

// catalogReservations keeps a volume's persistent reservations in the
// catalog, so that every node (and a new primary) has them.
type catalogReservations struct {
	n      *Node
	volume string
	s      *served // its servedEpoch is the epoch changes commit at
}

func (r catalogReservations) LoadReservations() ([]byte, error) {
	v, ok := r.n.cluster.State().Volumes[r.volume]
	if !ok {
		return nil, fmt.Errorf("volume %q is not in the catalog", r.volume)
	}
	return v.Reservations, nil
}

// SaveReservations commits the state to the catalog, then keeps a copy in
// the local store: a node that loses its raft directory while it is the
// only node imports its volumes again with their latest reservations.
func (r catalogReservations) SaveReservations(b []byte) error {
	ctx, cancel := context.WithTimeout(r.n.ctx, 10*time.Second)
	defer cancel()
	if _, err := r.n.cluster.Propose(ctx, cluster.SetReservations{Volume: r.volume, Epoch: r.s.servedEpoch.Load(), Data: b}); err != nil {
		return err
	}
	local, err := r.n.store.Reservations(r.volume)
	if err == nil {
		err = local.SaveReservations(b)
	}
	if err != nil {
		r.n.log.Warn("reservations committed to the catalog but not copied to the local store", "volume", r.volume, "err", err)
	}
	return nil
}

// renewCopy makes this node's copy of a volume a new copy (a new copy ID,
// which the reconciler reports): its mirror was deposed, so it may hold
// writes no other copy has, in regions nothing recorded; the catalog takes
// it out of the in-sync set and the primary rebuilds it in full. Until the
// catalog has the new ID, the copy serves no primary.
func (n *Node) renewCopy(vol string) {
	info, err := n.store.Get(vol)
	if err != nil {
		n.log.Warn("a deposed primary's copy to renew is not here", "volume", vol, "err", err)
		return
	}
	// Owed first: until the new ID is there, the copy serves no primary
	// (copyUsable), and the reconciler tries again (ensureCopy).
	n.setOwed(info.ID, true)
	if _, err := n.payRenewal(vol, info.ID, n.renewWaitOr()); err != nil {
		n.log.Error("a deposed primary's copy could not be renewed yet; it stands for nothing until the reconciler renews it", "volume", vol, "err", err)
	}
}

// payRenewal gives the local copy of vol (volume ID id), owed a renewal,
// its new copy ID, waiting at most wait for the store.
func (n *Node) payRenewal(vol, id string, wait time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(n.ctx, wait)
	defer cancel()
	cid, err := n.store.RenewCopyID(ctx, vol)
	if err != nil {
		return "", err
	}
	n.setOwed(id, false)
	n.log.Warn("this node's copy is a new copy now (rebuilt in full): it was deposed as primary and may hold unacknowledged writes",
		"volume", vol, "copy", cid)
	n.wake()
	return cid, nil
}

func (n *Node) setOwed(id string, owed bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if owed {
		n.owed[id] = true
	} else {
		delete(n.owed, id)
	}
}

func (n *Node) owes(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.owed[id]
}

// renewWaitOr is how long a renewal waits for the store's operation slot
// on the volume (a merge may hold it): renewWait, 30 s if unset.
func (n *Node) renewWaitOr() time.Duration {
	if n.renewWait > 0 {
		return n.renewWait
	}
	return 30 * time.Second
}

// finishPending redoes, through the new mirror, an operation in the
// write stream the volume's catalog says is unfinished (a revert the
// primary crashed in), then clears it.
func (n *Node) finishPending(ctx context.Context, v cluster.Volume, m replication.Spread) error {
	if v.Pending == "" {
		return nil
	}
	kind, arg, _ := strings.Cut(v.Pending, ":")
	if kind != "revert" {
		return fmt.Errorf("unknown pending operation %q", v.Pending)
	}
	op := barrierOp{Op: "revert", Snapshot: arg}
	n.log.Warn("finishing a revert a former term did not finish", "volume", v.Name, "snapshot", arg)
	if err := m.Barrier(ctx, op.encode(), func() error { return n.store.Revert(ctx, v.Name, arg, nil) }); err != nil {
		return fmt.Errorf("finishing the revert to %q: %w", arg, err)
	}
	_, err := n.cluster.Propose(ctx, cluster.SetPending{Volume: v.Name, Epoch: v.Epoch, By: n.cfg.Name, Op: ""})
	return err
}

// refusalQuiet is how long a proposal the catalog refused is not made
// again (the reconciler would otherwise repeat it every pass).
const refusalQuiet = 30 * time.Second

// mayPropose says whether the proposal keyed key may be made now.
func (n *Node) mayPropose(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	at, ok := n.refusals[key]
	return !ok || time.Since(at) > refusalQuiet
}

// refused records that the catalog refused the proposal keyed key.
func (n *Node) refused(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.refusals) > 10000 {
		clear(n.refusals)
	}
	n.refusals[key] = time.Now()
}
