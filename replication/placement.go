package replication

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// errRemoved fails the stream of a replica removed from the placement.
var errRemoved = errors.New("replica removed from the placement")

// Replicas returns the names of the Mirror's replicas (in sync or not).
func (m *Mirror) Replicas() []string {
	set := m.set()
	out := make([]string, len(set))
	for i, r := range set {
		out[i] = r.name
	}
	return out
}

// AddReplica starts resyncing a new replica: full == true marks every
// region dirty (a new, empty copy: full rebuild), false resyncs from the
// DirtyLog's regions for it (they must be all it misses: its map was kept
// up to date by every primary since it left the in-sync set). It joins the
// in-sync set through Rejoin like any resynced replica. Adding one already
// there is a no-op.
func (m *Mirror) AddReplica(name string, full bool) error {
	if name == "" || name == m.cfg.Self || strings.Contains(name, "@") {
		return fmt.Errorf("replication: volume %s: replica %q: empty, Self, or with an @", m.cfg.VolumeID, name)
	}
	m.setMu.Lock()
	defer m.setMu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	if slices.ContainsFunc(m.set(), func(r *replica) bool { return r.name == name }) {
		return nil
	}
	r := newReplica(m, name, stateOut)
	if full {
		if err := r.markAll(); err != nil {
			r.cancel()
			return fmt.Errorf("volume %s: marking new replica %s for a full rebuild: %w", m.cfg.VolumeID, name, err)
		}
	}
	// Load its map and join the set with no write in flight: every write
	// that does not see the replica is in the map it loaded, every later
	// one marks its regions for it.
	m.gate.Lock()
	err := r.dirty.load()
	if err == nil {
		set := append(slices.Clone(m.set()), r)
		m.replicas.Store(&set)
	}
	m.gate.Unlock()
	if err != nil {
		r.cancel()
		return fmt.Errorf("volume %s: reading the dirty map of new replica %s: %w", m.cfg.VolumeID, name, err)
	}
	d, _ := r.dirty.counts()
	m.log.Info("replication: replica added; resyncing it", "replica", name, "full_rebuild", full, "dirty_regions", d)
	r.spawn(r.loop)
	return nil
}

// RemoveReplica stops writing to a replica that left the placement: its
// resync stops, its stream closes, writes no longer wait for it (those in
// flight to it complete without it: no Drop), and its dirty map is cleared
// (Clear with no regions). Call it once the catalog no longer counts the
// replica as a copy. Removing an unknown one is a no-op.
func (m *Mirror) RemoveReplica(name string) error {
	m.setMu.Lock()
	defer m.setMu.Unlock()
	i := slices.IndexFunc(m.set(), func(r *replica) bool { return r.name == name })
	if i < 0 {
		return nil
	}
	r := m.set()[i]
	// From here on no I/O waits for it, and a failure of its stream
	// completes the writes that were waiting for it.
	r.mu.Lock()
	r.state = stateRemoved
	p := r.peer
	r.mu.Unlock()
	r.cancel() // its Drop, Rejoin, dial or backoff
	if p != nil {
		p.fail(fmt.Errorf("volume %s: replica %s: %w", m.cfg.VolumeID, name, errRemoved))
	}
	r.kickLoop()
	// Out of the set with no I/O in flight: none holds it afterwards.
	m.gate.Lock()
	set := slices.DeleteFunc(slices.Clone(m.set()), func(x *replica) bool { return x == r })
	m.replicas.Store(&set)
	m.gate.Unlock()
	r.stop()
	r.dirty.ioMu.Lock()
	err := m.cfg.Dirty.Clear(m.cfg.VolumeID, name, nil)
	r.dirty.ioMu.Unlock()
	if err != nil {
		return fmt.Errorf("volume %s: clearing the dirty map of removed replica %s: %w", m.cfg.VolumeID, name, err)
	}
	m.log.Info("replication: replica removed", "replica", name)
	return nil
}

// Fail fails the replica's stream now, as if its connection broke, if a
// request to it has waited stalled or longer: the writes waiting for it
// complete once the regions it may miss are persisted and it is dropped
// from the in-sync set. For a replica the cluster knows is gone (its node's
// lease ended) before its own timeout says so; one whose stream answers
// (its node cut off from the leader only) is left alone. An unknown
// replica, or one without a stream, is left alone too.
func (m *Mirror) Fail(replica string, stalled time.Duration, why error) {
	for _, r := range m.set() {
		if r.name != replica {
			continue
		}
		r.mu.Lock()
		p := r.peer
		r.mu.Unlock()
		if p != nil && p.waitedFor(time.Now()) >= stalled {
			p.fail(fmt.Errorf("volume %s: replica %s: %w", m.cfg.VolumeID, replica, why))
		}
	}
}
