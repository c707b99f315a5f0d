package volume

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"tandem.io/tandem/volume/catalog"
	"tandem.io/tandem/volume/layer"
)

// Snapshot freezes the volume's current content as snapshot name and
// gives the volume a new empty head on it. In-flight writes finish first and
// none start until the new head is in place, so the snapshot holds every
// write acknowledged before it and none started after it. Constant time.
func (s *Store) Snapshot(ctx context.Context, volume, name string) (SnapshotInfo, error) {
	if name == "" {
		name = time.Now().UTC().Format("20060102-150405")
	}
	if err := ValidateName(name); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot name: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.healthy(volume)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if _, ok := s.snapshotRec(e, name); ok {
		return SnapshotInfo{}, fmt.Errorf("volume %q: snapshot %q: %w", volume, name, ErrExists)
	}
	var info SnapshotInfo
	err = e.dev.exclusive(func() error {
		if err := e.dev.chain.Flush(ctx); err != nil {
			return err
		}
		old := s.recs[e.rec.Head]
		frozen := old
		frozen.Snapshot, frozen.Created = name, time.Now().UTC()
		head, err := s.newHead(e.rec, old.ID)
		if err != nil {
			return err
		}
		rec := e.rec
		rec.Head = head.ID
		if err := s.commitHead(rec, head, []catalog.Layer{frozen}, nil); err != nil {
			return err
		}
		s.recs[frozen.ID] = frozen
		e.rec = rec
		info = SnapshotInfo{Name: name, Created: frozen.Created}
		return s.switchHead(e, head.ID)
	})
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("volume %q: snapshot %q: %w", volume, name, err)
	}
	s.log.Info("snapshot created", "volume", volume, "snapshot", name)
	return info, nil
}

// Revert makes the volume's content the snapshot's: the current head (and
// what was written since) is dropped and a new empty head starts on the
// snapshot. Constant time. The caller closes sessions first.
func (s *Store) Revert(ctx context.Context, volume, snapshot string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, snap, err := s.snapshotOf(volume, snapshot)
	if err != nil {
		return err
	}
	old := s.recs[e.rec.Head]
	err = e.dev.exclusive(func() error {
		head, err := s.newHead(e.rec, snap.ID)
		if err != nil {
			return err
		}
		rec := e.rec
		rec.Head = head.ID
		if err := s.commitHead(rec, head, nil, []string{old.ID}); err != nil {
			return err
		}
		e.rec = rec
		return s.switchHead(e, head.ID)
	})
	if err != nil {
		return fmt.Errorf("volume %q: revert to %q: %w", volume, snapshot, err)
	}
	s.dropLayer(old)
	s.log.Info("volume reverted", "volume", volume, "snapshot", snapshot)
	return nil
}

// Clone makes a new volume whose content is the snapshot's (or, with no
// snapshot named, the source's current content, through a snapshot taken
// for it). Writes to either never show in the other. Constant time.
func (s *Store) Clone(ctx context.Context, source, snapshot string, spec Spec) (Info, error) {
	// Check the new name before taking a snapshot for it.
	if err := ValidateName(spec.Name); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	_, taken := s.vols[spec.Name]
	s.mu.Unlock()
	if taken {
		return Info{}, fmt.Errorf("volume %q: %w", spec.Name, ErrExists)
	}
	if snapshot == "" {
		snapshot = "for-" + spec.Name
		if _, err := s.Snapshot(ctx, source, snapshot); err != nil {
			return Info{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	src, snap, err := s.snapshotOf(source, snapshot)
	if err != nil {
		return Info{}, err
	}
	if _, ok := s.vols[spec.Name]; ok {
		return Info{}, fmt.Errorf("volume %q: %w", spec.Name, ErrExists)
	}
	rec := newRecord(spec.Name, src.rec.Size, spec.Export)
	if err := s.createVolume(rec, snap.ID); err != nil {
		return Info{}, err
	}
	s.log.Info("volume cloned", "volume", spec.Name, "source", source, "snapshot", snapshot)
	return s.info(s.vols[spec.Name]), nil
}

// DeleteSnapshot merges the snapshot into the layers on it (they keep
// reading the same) and removes it, giving its space back. A snapshot with
// clones is refused until they are deleted.
func (s *Store) DeleteSnapshot(ctx context.Context, volume, snapshot string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, snap, err := s.snapshotOf(volume, snapshot)
	if err != nil {
		return err
	}
	if cl := s.clonesOf(snap.ID); len(cl) > 0 {
		return fmt.Errorf("volume %q: snapshot %q: %w: it has clones %s; delete them first", volume, snapshot, ErrInUse, strings.Join(cl, ", "))
	}
	src := s.layers[snap.ID]
	var children []catalog.Layer
	for _, r := range s.recs {
		if r.Parent == snap.ID {
			children = append(children, r)
		}
	}
	// 1. Copy into each child what it showed through from the snapshot.
	for _, c := range children {
		l := s.layers[c.ID]
		if l == nil {
			return fmt.Errorf("volume %q: snapshot %q: child layer %s is not open", volume, snapshot, c.ID)
		}
		if err := l.CopyMissing(src, e.dev.exclusive); err != nil {
			return fmt.Errorf("volume %q: merging snapshot %q: %w", volume, snapshot, err)
		}
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
	err = e.dev.exclusive(func() error {
		for _, c := range children {
			s.recs[c.ID] = c
			s.layers[c.ID].SetParent(src.Parent)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// 3. The file goes last.
	s.dropLayer(snap)
	s.log.Info("snapshot deleted", "volume", volume, "snapshot", snapshot, "merged_into", len(children))
	return nil
}

// Resize grows the volume to size bytes; shrinking is refused.
func (s *Store) Resize(ctx context.Context, volume string, size int64) (Info, error) {
	if err := ValidateSize(size); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.healthy(volume)
	if err != nil {
		return Info{}, err
	}
	if size < e.rec.Size {
		return Info{}, fmt.Errorf("volume %q: %w (from %d to %d bytes)", volume, ErrShrink, e.rec.Size, size)
	}
	if size == e.rec.Size {
		return s.info(e), nil
	}
	err = e.dev.exclusive(func() error {
		if err := e.dev.chain.Grow(size); err != nil {
			return err
		}
		e.dev.size.Store(size)
		rec, head := e.rec, s.recs[e.rec.Head]
		rec.Size, head.Size = size, size
		if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{head}}); err != nil {
			return err
		}
		e.rec, s.recs[head.ID] = rec, head
		return nil
	})
	if err != nil {
		return Info{}, fmt.Errorf("volume %q: resize to %d: %w", volume, size, err)
	}
	s.log.Info("volume resized", "volume", volume, "size", size)
	return s.info(e), nil
}

// healthy returns a served volume's entry.
func (s *Store) healthy(name string) (*entry, error) {
	if s.closed {
		return nil, fmt.Errorf("volume store closed")
	}
	e, ok := s.vols[name]
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if e.err != nil {
		return nil, fmt.Errorf("volume %q: %w: %v", name, ErrUnavailable, e.err)
	}
	return e, nil
}

// snapshotOf returns a served volume and the record of one of its snapshots.
func (s *Store) snapshotOf(volume, snapshot string) (*entry, catalog.Layer, error) {
	e, err := s.healthy(volume)
	if err != nil {
		return nil, catalog.Layer{}, err
	}
	snap, ok := s.snapshotRec(e, snapshot)
	if !ok {
		return nil, catalog.Layer{}, fmt.Errorf("volume %q: snapshot %q: %w", volume, snapshot, ErrNotFound)
	}
	return e, snap, nil
}

func (s *Store) snapshotRec(e *entry, name string) (catalog.Layer, bool) {
	for _, r := range s.recs {
		if r.Volume == e.rec.ID && r.Snapshot == name {
			return r, true
		}
	}
	return catalog.Layer{}, false
}

// newHead creates the file of an empty head layer on parent.
func (s *Store) newHead(rec catalog.Volume, parent string) (catalog.Layer, error) {
	l := catalog.Layer{ID: hex.EncodeToString(randomBytes(16)), Parent: parent, Size: rec.Size, Volume: rec.ID,
		Created: time.Now().UTC()}
	l.Path = s.layerPath(l.ID)
	return l, layer.Create(filepath.Join(s.dir, l.Path), rec.Size)
}

// commitHead records a volume's new head (and other layer changes) in one
// transaction; if it fails, the new head's file is removed.
func (s *Store) commitHead(rec catalog.Volume, head catalog.Layer, put []catalog.Layer, del []string) error {
	ch := catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: append(put, head), DeleteLayers: del}
	if err := s.cat.Apply(ch); err != nil {
		os.Remove(filepath.Join(s.dir, head.Path))
		return err
	}
	s.recs[head.ID] = head
	return nil
}

// switchHead serves e from its new head layer. Called with e's I/O
// excluded.
func (s *Store) switchHead(e *entry, head string) error {
	l, err := s.openLayer(head)
	if err != nil {
		e.err = err
		return err
	}
	e.dev.chain = layer.NewChain(l, e.rec.Size)
	return nil
}
