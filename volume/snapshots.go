package volume

import (
	"context"
	"errors"
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
	return s.SnapshotAs(ctx, volume, name, "")
}

// SnapshotAs is Snapshot recording id, the cluster's ID of the snapshot,
// with it: every copy's snapshot of that name then shows which snapshot
// of the cluster it is.
func (s *Store) SnapshotAs(ctx context.Context, volume, name, id string) (SnapshotInfo, error) {
	if name == "" {
		name = time.Now().UTC().Format("20060102-150405")
	}
	if err := ValidateName(name); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot name: %w", err)
	}
	e, release, err := s.lock(ctx, volume)
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer release()
	info, err := s.snapshot(e, name, id, nil)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("volume %q: snapshot %q: %w", volume, name, err)
	}
	s.log.Info("snapshot created", "volume", volume, "snapshot", name)
	return info, nil
}

// snapshot takes snapshot name of e; with clone given, the same commit
// also makes volume clone on the snapshot (Clone with no snapshot named:
// one commit, so a failure leaves neither). Called with e's op slot held.
func (s *Store) snapshot(e *entry, name, id string, clone *catalog.Volume) (SnapshotInfo, error) {
	s.mu.Lock()
	if e.err != nil {
		s.mu.Unlock()
		return SnapshotInfo{}, fmt.Errorf("%w: %v", ErrUnavailable, e.err)
	}
	if _, ok := s.snapshotRec(e, name); ok {
		s.mu.Unlock()
		return SnapshotInfo{}, ErrExists
	}
	rec, old := e.rec, s.recs[e.rec.Head]
	oldLayer := s.layers[old.ID]
	s.mu.Unlock()

	head, l, err := s.newHead(rec, oldLayer)
	if err != nil {
		return SnapshotInfo{}, err
	}
	heads := []fresh{{head, l}}
	frozen := old
	frozen.Snapshot, frozen.SnapshotID, frozen.Created = name, id, time.Now().UTC()
	rec.Head = head.ID
	ch := catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{frozen, head}}
	if clone != nil {
		clone.Size = frozen.Size
		ch2, cl, err := s.newHead(*clone, oldLayer)
		if err != nil {
			s.discard(heads...)
			return SnapshotInfo{}, err
		}
		heads = append(heads, fresh{ch2, cl})
		clone.Head = ch2.ID
		ch.PutVolumes = append(ch.PutVolumes, *clone)
		ch.PutLayers = append(ch.PutLayers, ch2)
	}
	committed := false
	err = e.dev.exclusive(func() error {
		if err := e.dev.chain.Load().Flush(context.Background()); err != nil {
			return err
		}
		if err := s.cat.Apply(ch); err != nil {
			return err
		}
		committed = true
		e.dev.chain.Store(layer.NewChain(l, rec.Size))
		if err := oldLayer.Freeze(); err != nil {
			s.log.Warn("a snapshot stays open read-write until restart", "layer", old.ID, "err", err)
		}
		return nil
	})
	if !committed {
		s.undo(e, err, heads...)
		return SnapshotInfo{}, err
	}
	s.mu.Lock()
	e.rec = rec
	s.recs[frozen.ID], s.recs[head.ID], s.layers[head.ID] = frozen, head, l
	if clone != nil {
		h := heads[1]
		s.recs[h.rec.ID], s.layers[h.rec.ID] = h.rec, h.l
		s.vols[clone.Name] = servedEntry(*clone, h.l)
	}
	s.mu.Unlock()
	return SnapshotInfo{Name: name, ID: id, Created: frozen.Created, Size: frozen.Size}, nil
}

// Revert makes the volume's content the snapshot's: the current head (and
// what was written since) is dropped and a new empty head starts on the
// snapshot. Constant time. before (if given) runs first with the volume's
// op slot held: the node closes initiators' sessions there.
//
// Steps: the new head's file is created, synced and opened; with I/O
// drained, one commit names it the head and drops the old head's record;
// the volume switches to it; the old head's file is removed.
func (s *Store) Revert(ctx context.Context, volume, snapshot string, before func() error) error {
	e, release, err := s.lock(ctx, volume)
	if err != nil {
		return err
	}
	defer release()
	s.mu.Lock()
	snap, err := s.snapshotOf(e, snapshot)
	var base *layer.Layer
	if err == nil {
		base, err = s.openLayer(snap.ID)
	}
	rec, old := e.rec, s.recs[e.rec.Head]
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("volume %q: revert to %q: %w", volume, snapshot, err)
	}
	if before != nil {
		if err := before(); err != nil {
			return err
		}
	}
	head, l, err := s.newHead(rec, base)
	if err != nil {
		return fmt.Errorf("volume %q: revert to %q: %w", volume, snapshot, err)
	}
	rec.Head = head.ID
	committed := false
	err = e.dev.exclusive(func() error {
		if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{head}, DeleteLayers: []string{old.ID}}); err != nil {
			return err
		}
		committed = true
		e.dev.chain.Store(layer.NewChain(l, rec.Size))
		return nil
	})
	if !committed {
		s.undo(e, err, fresh{head, l})
		return fmt.Errorf("volume %q: revert to %q: %w", volume, snapshot, err)
	}
	s.mu.Lock()
	e.rec = rec
	s.recs[head.ID], s.layers[head.ID] = head, l
	gone := s.forget(old)
	s.mu.Unlock()
	s.drop([]catalog.Layer{old}, []*layer.Layer{gone})
	s.log.Info("volume reverted", "volume", volume, "snapshot", snapshot)
	return nil
}

// Clone makes a new volume whose content is the snapshot's (or, with no
// snapshot named, the source's current content, through a snapshot
// "for-<name>" taken in the same commit). Writes to either never show in
// the other. Constant time.
//
// Steps: the clone's head file (and with no snapshot named, the source's
// new head) is created, synced and opened; one commit records the volume
// and its head (and the snapshot); it is served.
func (s *Store) Clone(ctx context.Context, source, snapshot string, spec Spec) (Info, error) {
	if err := ValidateName(spec.Name); err != nil {
		return Info{}, err
	}
	e, release, err := s.lock(ctx, source)
	if err != nil {
		return Info{}, err
	}
	defer release()
	unreserve, err := s.reserve(spec.Name)
	if err != nil {
		return Info{}, err
	}
	defer unreserve()
	rec, err := s.newRecord(spec, 0)
	if err != nil {
		return Info{}, err
	}
	if snapshot == "" {
		snapshot = "for-" + spec.Name
		if _, err := s.snapshot(e, snapshot, "", &rec); err != nil {
			return Info{}, fmt.Errorf("volume %q: snapshot %q for the clone: %w", source, snapshot, err)
		}
		s.log.Info("snapshot created", "volume", source, "snapshot", snapshot)
	} else {
		s.mu.Lock()
		snap, err := s.snapshotOf(e, snapshot)
		var base *layer.Layer
		if err == nil {
			base, err = s.openLayer(snap.ID)
		}
		s.mu.Unlock()
		if err != nil {
			return Info{}, err
		}
		rec.Size = snap.Size
		if err := s.createVolume(rec, base); err != nil {
			return Info{}, err
		}
	}
	s.log.Info("volume cloned", "volume", spec.Name, "source", source, "snapshot", snapshot)
	return s.Get(spec.Name)
}

// DeleteSnapshot merges the snapshot into the layers on it (they keep
// reading the same) and removes it, giving its space back. A snapshot with
// clones is refused until they are deleted.
//
// Steps: each child layer gets the blocks it showed through from the
// snapshot, synced (other operations go on meanwhile, this volume's I/O
// too: a block is locked only while it is copied); one commit stacks the
// children on the snapshot's parent and drops its record; with I/O drained
// on every volume whose chain runs through it, the children are re-stacked
// in memory; its file is removed. The merge runs for the store, not for
// the caller: a caller that gives up does not stop it (Close does).
func (s *Store) DeleteSnapshot(ctx context.Context, volume, snapshot string) error {
	e, release, err := s.lock(ctx, volume)
	if err != nil {
		return err
	}
	defer release()
	s.mu.Lock()
	plan, err := s.planMerge(e, snapshot)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("volume %q: snapshot %q: %w", volume, snapshot, err)
	}
	// 1. Copy into each child what it showed through from the snapshot.
	// Only the head takes writes; each block of it is locked while it is
	// checked and copied.
	head := e.dev.chain.Load().Head()
	for _, l := range plan.children {
		lock := func(uint64) (func(), error) { return func() {}, nil }
		if l == head {
			lock = e.dev.lockBlock
		}
		if err := l.CopyMissing(s.ctx, plan.src, lock); err != nil {
			return fmt.Errorf("volume %q: merging snapshot %q: %w", volume, snapshot, err)
		}
	}
	// 2. One transaction: the children sit on the snapshot's parent, the
	// snapshot is gone. Whatever its outcome, the children read the same
	// (they hold every block they showed through), so a commit with an
	// unknown outcome stops nothing but later commits.
	ch := catalog.Changes{DeleteLayers: []string{plan.snap.ID}}
	for i := range plan.childRecs {
		plan.childRecs[i].Parent = plan.snap.Parent
		ch.PutLayers = append(ch.PutLayers, plan.childRecs[i])
	}
	if err := s.cat.Apply(ch); err != nil {
		s.undo(nil, err)
		return fmt.Errorf("volume %q: deleting snapshot %q: %w", volume, snapshot, err)
	}
	// 3. Re-stack the children while no I/O runs through them: this
	// volume's and every clone's on a later snapshot (clones are made
	// only with this volume's op slot, so the set cannot grow meanwhile).
	s.mu.Lock()
	devs := s.devicesThrough(plan.src)
	s.mu.Unlock()
	var unhold []func()
	for _, d := range devs {
		unhold = append(unhold, d.hold())
	}
	for _, l := range plan.children {
		l.SetParent(plan.src.Parent())
	}
	for _, u := range unhold {
		u()
	}
	// 4. The file goes last.
	s.mu.Lock()
	for _, c := range plan.childRecs {
		s.recs[c.ID] = c
	}
	gone := s.forget(plan.snap)
	s.mu.Unlock()
	s.drop([]catalog.Layer{plan.snap}, []*layer.Layer{gone})
	s.log.Info("snapshot deleted", "volume", volume, "snapshot", snapshot, "merged_into", len(plan.children))
	return nil
}

// mergePlan is what deleting a snapshot works on.
type mergePlan struct {
	snap      catalog.Layer
	src       *layer.Layer
	childRecs []catalog.Layer
	children  []*layer.Layer
}

// planMerge checks that snapshot may be deleted and opens what the merge
// needs. Called with s.mu held.
func (s *Store) planMerge(e *entry, snapshot string) (mergePlan, error) {
	var p mergePlan
	snap, err := s.snapshotOf(e, snapshot)
	if err != nil {
		return p, err
	}
	if cl := s.clonesOf(snap.ID); len(cl) > 0 {
		return p, fmt.Errorf("%w: it has clones %s; delete them first", ErrInUse, strings.Join(cl, ", "))
	}
	if err := s.errUnreadable("deleting a snapshot"); err != nil {
		return p, err
	}
	p.snap = snap
	if p.src, err = s.openLayer(snap.ID); err != nil {
		return p, err
	}
	// The children are the volume's own layers: a clone on the snapshot
	// is refused above, and only this volume's operations (excluded by its
	// op slot) add layers on its snapshots.
	for _, r := range s.recs {
		if r.Parent == snap.ID {
			p.childRecs = append(p.childRecs, r)
		}
	}
	sort.Slice(p.childRecs, func(i, j int) bool { return p.childRecs[i].ID < p.childRecs[j].ID })
	for _, c := range p.childRecs {
		l := s.layers[c.ID]
		if l == nil {
			// A snapshot no chain runs through is opened on demand.
			if l, err = s.openLayer(c.ID); err != nil {
				return p, err
			}
		}
		p.children = append(p.children, l)
	}
	return p, nil
}

// devicesThrough lists the devices of the served volumes whose chain runs
// through layer l, in name order. Called with s.mu held.
func (s *Store) devicesThrough(l *layer.Layer) []*Volume {
	var names []string
	for n, e := range s.vols {
		if e.dev == nil {
			continue
		}
		for x := e.dev.chain.Load().Head(); x != nil; x = x.Parent() {
			if x == l {
				names = append(names, n)
				break
			}
		}
	}
	sort.Strings(names)
	devs := make([]*Volume, len(names))
	for i, n := range names {
		devs[i] = s.vols[n].dev
	}
	return devs
}

// Resize grows the volume to size bytes; shrinking is refused.
//
// Steps, with I/O drained: the head's file grows and is synced; one commit
// records the size; only then is it served. If the commit is refused, the
// file is cut back. A cut between the two (or a commit with an unknown
// outcome) leaves a head longer than its record, which Open cuts back.
func (s *Store) Resize(ctx context.Context, volume string, size int64) (Info, error) {
	if err := ValidateSize(size); err != nil {
		return Info{}, err
	}
	e, release, err := s.lock(ctx, volume)
	if err != nil {
		return Info{}, err
	}
	defer release()
	s.mu.Lock()
	rec, hr, failed := e.rec, s.recs[e.rec.Head], e.err
	s.mu.Unlock()
	switch {
	case failed != nil:
		return Info{}, fmt.Errorf("volume %q: %w: %v", volume, ErrUnavailable, failed)
	case size < rec.Size:
		return Info{}, fmt.Errorf("volume %q: %w (from %d to %d bytes)", volume, ErrShrink, rec.Size, size)
	case size == rec.Size:
		return s.Get(volume)
	}
	rec.Size, hr.Size = size, size
	err = e.dev.exclusive(func() error {
		head := e.dev.chain.Load().Head()
		oldSize := head.Size()
		if err := head.Grow(size); err != nil {
			return err
		}
		if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{hr}}); err != nil {
			if errors.Is(err, catalog.ErrUncertain) {
				return err // the file stays long: whichever size is recorded, Open copes
			}
			if terr := head.Shrink(oldSize); terr != nil {
				s.log.Warn("a resize that failed left the head longer than its record; it is cut back at the next start", "volume", volume, "err", terr)
			}
			return err
		}
		e.dev.chain.Load().SetSize(size)
		e.dev.size.Store(size)
		return nil
	})
	if err != nil {
		s.undo(nil, err)
		return Info{}, fmt.Errorf("volume %q: resize to %d: %w", volume, size, err)
	}
	s.mu.Lock()
	e.rec, s.recs[hr.ID] = rec, hr
	s.mu.Unlock()
	s.log.Info("volume resized", "volume", volume, "size", size)
	return s.Get(volume)
}

// snapshotOf returns the record of one of a served volume's snapshots.
// Called with s.mu held.
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

// snapshotRec finds a snapshot of e by name. Called with s.mu held.
func (s *Store) snapshotRec(e *entry, name string) (catalog.Layer, bool) {
	for _, r := range s.recs {
		if r.Volume == e.rec.ID && r.Snapshot == name {
			return r, true
		}
	}
	return catalog.Layer{}, false
}
