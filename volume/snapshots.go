package volume

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"tandem.io/tandem/volume/catalog"
	"tandem.io/tandem/volume/layer"
)

// Snapshot freezes the volume's current content as snapshot name and
// gives the volume a new empty head on it. In-flight writes finish first and
// none start until the new head is in place, so the snapshot holds every
// write acknowledged before it and none started after it. Constant time.
//
// Steps: the new head's file is created, synced and opened; with I/O
// drained, the old head is flushed; one commit makes the old head the
// snapshot and the new one the head; the volume switches to it and the
// snapshot is reopened read-only.
func (s *Store) Snapshot(ctx context.Context, volume, name string) (SnapshotInfo, error) {
	if name == "" {
		name = time.Now().UTC().Format("20060102-150405")
	}
	if err := ValidateName(name); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot name: %w", err)
	}
	e, unlock, err := s.lock(ctx, volume)
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer unlock()
	info, err := s.snapshot(e, name)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("volume %q: snapshot %q: %w", volume, name, err)
	}
	s.log.Info("snapshot created", "volume", volume, "snapshot", name)
	return info, nil
}

// snapshot takes a snapshot of e; called with e's op slot and s.mu held.
func (s *Store) snapshot(e *entry, name string) (SnapshotInfo, error) {
	if e.err != nil {
		return SnapshotInfo{}, fmt.Errorf("%w: %v", ErrUnavailable, e.err)
	}
	if _, ok := s.snapshotRec(e, name); ok {
		return SnapshotInfo{}, ErrExists
	}
	old := s.recs[e.rec.Head]
	oldLayer := s.layers[old.ID]
	head, l, err := s.newHead(e.rec, oldLayer)
	if err != nil {
		return SnapshotInfo{}, err
	}
	frozen := old
	frozen.Snapshot, frozen.Created = name, time.Now().UTC()
	err = e.dev.exclusive(func() error {
		if err := e.dev.chain.Load().Flush(context.Background()); err != nil {
			return err
		}
		rec := e.rec
		rec.Head = head.ID
		if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{frozen, head}}); err != nil {
			return err
		}
		e.rec = rec
		s.recs[frozen.ID], s.recs[head.ID], s.layers[head.ID] = frozen, head, l
		e.dev.chain.Store(layer.NewChain(l, rec.Size))
		if err := oldLayer.Freeze(); err != nil {
			s.log.Warn("a snapshot stays open read-write until restart", "layer", old.ID, "err", err)
		}
		return nil
	})
	if err != nil {
		if s.recs[head.ID].ID == "" {
			s.discardHead(head, l)
		}
		return SnapshotInfo{}, err
	}
	return SnapshotInfo{Name: name, Created: frozen.Created, Size: frozen.Size}, nil
}

// Revert makes the volume's content the snapshot's: the current head (and
// what was written since) is dropped and a new empty head starts on the
// snapshot. Constant time. The caller closes sessions first.
//
// Steps: the new head's file is created, synced and opened; with I/O
// drained, one commit names it the head and drops the old head's record;
// the volume switches to it; the old head's file is removed.
func (s *Store) Revert(ctx context.Context, volume, snapshot string) error {
	e, unlock, err := s.lock(ctx, volume)
	if err != nil {
		return err
	}
	defer unlock()
	snap, err := s.snapshotOf(e, snapshot)
	if err != nil {
		return err
	}
	old := s.recs[e.rec.Head]
	base, err := s.openLayer(snap.ID)
	if err != nil {
		return fmt.Errorf("volume %q: revert to %q: %w", volume, snapshot, err)
	}
	head, l, err := s.newHead(e.rec, base)
	if err != nil {
		return fmt.Errorf("volume %q: revert to %q: %w", volume, snapshot, err)
	}
	err = e.dev.exclusive(func() error {
		rec := e.rec
		rec.Head = head.ID
		if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{head}, DeleteLayers: []string{old.ID}}); err != nil {
			return err
		}
		e.rec = rec
		s.recs[head.ID], s.layers[head.ID] = head, l
		e.dev.chain.Store(layer.NewChain(l, rec.Size))
		return nil
	})
	if err != nil {
		s.discardHead(head, l)
		return fmt.Errorf("volume %q: revert to %q: %w", volume, snapshot, err)
	}
	s.dropLayer(old)
	s.log.Info("volume reverted", "volume", volume, "snapshot", snapshot)
	return nil
}

// Clone makes a new volume whose content is the snapshot's (or, with no
// snapshot named, the source's current content, through a snapshot taken
// for it). Writes to either never show in the other. Constant time.
//
// Steps (after the snapshot, if one is taken for the clone): the clone's
// head file is created, synced and opened; one commit records the volume
// and its head; it is served.
func (s *Store) Clone(ctx context.Context, source, snapshot string, spec Spec) (Info, error) {
	if err := ValidateName(spec.Name); err != nil {
		return Info{}, err
	}
	e, unlock, err := s.lock(ctx, source)
	if err != nil {
		return Info{}, err
	}
	defer unlock()
	if _, taken := s.vols[spec.Name]; taken {
		return Info{}, fmt.Errorf("volume %q: %w", spec.Name, ErrExists)
	}
	if snapshot == "" {
		snapshot = "for-" + spec.Name
		if _, err := s.snapshot(e, snapshot); err != nil {
			return Info{}, fmt.Errorf("volume %q: snapshot %q: %w", source, snapshot, err)
		}
		s.log.Info("snapshot created", "volume", source, "snapshot", snapshot)
	}
	snap, err := s.snapshotOf(e, snapshot)
	if err != nil {
		return Info{}, err
	}
	base, err := s.openLayer(snap.ID)
	if err != nil {
		return Info{}, fmt.Errorf("volume %q: snapshot %q: %w", source, snapshot, err)
	}
	rec := newRecord(spec.Name, snap.Size, spec.Export)
	if err := s.createVolume(rec, base); err != nil {
		return Info{}, err
	}
	s.log.Info("volume cloned", "volume", spec.Name, "source", source, "snapshot", snapshot)
	return s.info(s.vols[spec.Name]), nil
}

// DeleteSnapshot merges the snapshot into the layers on it (they keep
// reading the same) and removes it, giving its space back. A snapshot with
// clones is refused until they are deleted.
//
// Steps: each child layer gets the blocks it showed through from the
// snapshot, synced (the store lock is not held meanwhile: other volumes'
// operations go on); one commit stacks the children on the snapshot's
// parent and drops its record; with I/O drained on every volume whose
// chain runs through it, the children are re-stacked in memory; its file is
// removed.
func (s *Store) DeleteSnapshot(ctx context.Context, volume, snapshot string) error {
	e, unlock, err := s.lock(ctx, volume)
	if err != nil {
		return err
	}
	defer unlock()
	snap, err := s.snapshotOf(e, snapshot)
	if err != nil {
		return err
	}
	if cl := s.clonesOf(snap.ID); len(cl) > 0 {
		return fmt.Errorf("volume %q: snapshot %q: %w: it has clones %s; delete them first", volume, snapshot, ErrInUse, strings.Join(cl, ", "))
	}
	src, err := s.openLayer(snap.ID)
	if err != nil {
		return fmt.Errorf("volume %q: snapshot %q: %w", volume, snapshot, err)
	}
	// The children are the volume's own layers: a clone on the snapshot
	// is refused above, and only this volume's operations (excluded by its
	// op slot) add layers on its snapshots.
	var children []catalog.Layer
	for _, r := range s.recs {
		if r.Parent == snap.ID {
			children = append(children, r)
		}
	}
	sort.Slice(children, func(i, j int) bool { return children[i].ID < children[j].ID })
	childLayers := make([]*layer.Layer, len(children))
	for i, c := range children {
		if childLayers[i] = s.layers[c.ID]; childLayers[i] == nil {
			// A snapshot no chain runs through is opened on demand.
			if childLayers[i], err = s.openLayer(c.ID); err != nil {
				return fmt.Errorf("volume %q: snapshot %q: %w", volume, snapshot, err)
			}
		}
	}
	// 1. Copy into each child what it showed through from the snapshot,
	// without the store lock: only writes into the child conflict with the
	// copy, and only the head takes writes (this volume's, kept out of
	// each block while it is checked and copied).
	head := e.dev.chain.Load().Head()
	s.mu.Unlock()
	for _, l := range childLayers {
		lock := func(uint64) (func(), error) { return func() {}, nil }
		if l == head {
			lock = e.dev.lockBlock
		}
		if err = l.CopyMissing(ctx, src, lock); err != nil {
			break
		}
	}
	s.mu.Lock()
	if err != nil {
		return fmt.Errorf("volume %q: merging snapshot %q: %w", volume, snapshot, err)
	}
	if s.closed {
		return fmt.Errorf("volume store closed")
	}
	// 2. One transaction: the children sit on the snapshot's parent, the
	// snapshot is gone.
	ch := catalog.Changes{DeleteLayers: []string{snap.ID}}
	for i := range children {
		children[i].Parent = snap.Parent
		ch.PutLayers = append(ch.PutLayers, children[i])
	}
	if err := s.cat.Apply(ch); err != nil {
		return fmt.Errorf("volume %q: deleting snapshot %q: %w", volume, snapshot, err)
	}
	// 3. Re-stack the children while no I/O runs through them: this
	// volume's and every clone's on a later snapshot.
	s.exclusiveThrough(src, func() {
		for i, c := range children {
			s.recs[c.ID] = c
			childLayers[i].SetParent(src.Parent)
		}
	})
	// 4. The file goes last.
	s.dropLayer(snap)
	s.log.Info("snapshot deleted", "volume", volume, "snapshot", snapshot, "merged_into", len(children))
	return nil
}

// exclusiveThrough runs fn with I/O drained on every served volume whose
// chain runs through layer l (devices locked in name order). Called with
// s.mu held.
func (s *Store) exclusiveThrough(l *layer.Layer, fn func()) {
	var names []string
	for n, e := range s.vols {
		if e.dev == nil {
			continue
		}
		for x := e.dev.chain.Load().Head(); x != nil; x = x.Parent {
			if x == l {
				names = append(names, n)
				break
			}
		}
	}
	sort.Strings(names)
	var unlock []func()
	for _, n := range names {
		unlock = append(unlock, s.vols[n].dev.hold())
	}
	fn()
	for _, u := range unlock {
		u()
	}
}

// Resize grows the volume to size bytes; shrinking is refused.
//
// Steps, with I/O drained: the head's file grows and is synced; one commit
// records the size; only then is it served. If the commit fails, the file
// is cut back. A cut between the two leaves a head longer than its record,
// which Open cuts back.
func (s *Store) Resize(ctx context.Context, volume string, size int64) (Info, error) {
	if err := ValidateSize(size); err != nil {
		return Info{}, err
	}
	e, unlock, err := s.lock(ctx, volume)
	if err != nil {
		return Info{}, err
	}
	defer unlock()
	if e.err != nil {
		return Info{}, fmt.Errorf("volume %q: %w: %v", volume, ErrUnavailable, e.err)
	}
	if size < e.rec.Size {
		return Info{}, fmt.Errorf("volume %q: %w (from %d to %d bytes)", volume, ErrShrink, e.rec.Size, size)
	}
	if size == e.rec.Size {
		return s.info(e), nil
	}
	err = e.dev.exclusive(func() error {
		head := e.dev.chain.Load().Head()
		oldSize := head.Size()
		if err := head.Grow(size); err != nil {
			return err
		}
		rec, hr := e.rec, s.recs[e.rec.Head]
		rec.Size, hr.Size = size, size
		if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{hr}}); err != nil {
			if terr := head.Shrink(oldSize); terr != nil {
				s.log.Warn("a resize that failed left the head longer than its record; it is cut back at the next start", "volume", volume, "err", terr)
			}
			return err
		}
		e.rec, s.recs[hr.ID] = rec, hr
		e.dev.chain.Load().SetSize(size)
		e.dev.size.Store(size)
		return nil
	})
	if err != nil {
		return Info{}, fmt.Errorf("volume %q: resize to %d: %w", volume, size, err)
	}
	s.log.Info("volume resized", "volume", volume, "size", size)
	return s.info(e), nil
}

// snapshotOf returns the record of one of a served volume's snapshots.
func (s *Store) snapshotOf(e *entry, snapshot string) (catalog.Layer, error) {
	if e.err != nil {
		return catalog.Layer{}, fmt.Errorf("volume %q: %w: %v", e.rec.Name, ErrUnavailable, e.err)
	}
	snap, ok := s.snapshotRec(e, snapshot)
	if !ok {
		return catalog.Layer{}, fmt.Errorf("volume %q: snapshot %q: %w", e.rec.Name, snapshot, ErrNotFound)
	}
	return snap, nil
}

func (s *Store) snapshotRec(e *entry, name string) (catalog.Layer, bool) {
	for _, r := range s.recs {
		if r.Volume == e.rec.ID && r.Snapshot == name {
			return r, true
		}
	}
	return catalog.Layer{}, false
}
