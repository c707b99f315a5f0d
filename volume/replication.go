package volume

import (
	"context"
	"encoding/hex"
	"fmt"

	"tandem.io/tandem/volume/catalog"
)

// What the store keeps for replication, by volume ID (the cluster's name
// for a volume on every node): the highest epoch this node accepted from a
// primary, and the dirty-region maps this node keeps, as a primary, for
// replicas that are out of sync. Both are in the local catalog, committed
// (durable) before the calls return; replication decides what they mean.

// NameOf returns the name of the volume with ID id.
func (s *Store) NameOf(id string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, e := range s.vols {
		if e.rec.ID == id {
			return name, nil
		}
	}
	return "", fmt.Errorf("volume ID %s: %w", id, ErrNotFound)
}

// DeviceByID returns the open device of the volume with ID id.
func (s *Store) DeviceByID(id string) (*Volume, error) {
	name, err := s.NameOf(id)
	if err != nil {
		return nil, err
	}
	return s.Device(name)
}

// AcceptedEpoch is the highest epoch accepted for volume id (0: none yet).
func (s *Store) AcceptedEpoch(id string) (uint64, error) { return s.cat.Epoch(id) }

// SetAcceptedEpoch records epoch as the highest accepted for volume id.
func (s *Store) SetAcceptedEpoch(id string, epoch uint64) error { return s.cat.SetEpoch(id, epoch) }

// DirtyRegions returns the regions of volume id that replica misses.
func (s *Store) DirtyRegions(id, replica string) ([]uint64, error) { return s.cat.Dirty(id, replica) }

// DirtyReplicas returns the replicas of volume id this node keeps a dirty
// map for (those it knows to be out of sync).
func (s *Store) DirtyReplicas(id string) ([]string, error) { return s.cat.DirtyReplicas(id) }

// MarkDirty adds regions to replica's dirty map of volume id.
func (s *Store) MarkDirty(id, replica string, regions []uint64) error {
	return s.cat.MarkDirty(id, replica, regions)
}

// ClearDirty removes regions from replica's dirty map of volume id; with
// none, the map goes.
func (s *Store) ClearDirty(id, replica string, regions []uint64) error {
	return s.cat.ClearDirty(id, replica, regions)
}

// DirtyEpoch is the epoch at which this node keeps volume id's dirty maps.
func (s *Store) DirtyEpoch(id string) (uint64, error) { return s.cat.DirtyEpoch(id) }

// StartDirtyEpoch drops volume id's dirty maps (but those named in keep)
// and keeps them at epoch from now on: this node became the primary at a
// new epoch, and maps of an earlier term miss what later primaries wrote.
func (s *Store) StartDirtyEpoch(id string, epoch uint64, keep ...string) error {
	return s.cat.StartDirtyEpoch(id, epoch, keep...)
}

// RenewCopyID gives the local copy of volume name a new copy ID: what it
// holds may differ from the other copies in ways nothing recorded (a
// primary deposed while it wrote), so the cluster must take it for a new
// copy and rebuild it in full.
func (s *Store) RenewCopyID(ctx context.Context, name string) (string, error) {
	e, release, err := s.lock(ctx, name)
	if err != nil {
		return "", err
	}
	defer release()
	s.mu.Lock()
	rec := e.rec
	s.mu.Unlock()
	rec.CopyID = hex.EncodeToString(randomBytes(16))
	if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}}); err != nil {
		return "", fmt.Errorf("volume %q: new copy ID: %w", name, err)
	}
	s.mu.Lock()
	e.rec = rec
	s.mu.Unlock()
	return rec.CopyID, nil
}
