package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/hashicorp/go-hclog"
)

// ImportVolume brings a volume a node already holds into the catalog, with
// its identity, snapshots, clone source and reservations: the volumes of a
// node that served alone before it started (or became part of) a cluster.
// It applies only to a volume whose name and ID the catalog does not know
// and that was never deleted, placed on known data nodes, its primary in
// sync; copy IDs (kept as given) only for placed nodes.
type ImportVolume struct {
	Volume Volume `json:"volume"`
}

func (ImportVolume) kind() string { return "import-volume" }

func (c ImportVolume) apply(s *State) error {
	v := c.Volume.Clone()
	fail := func(err error, format string, args ...any) error {
		return fmt.Errorf("import volume %s: %w: %s", v.Name, err, fmt.Sprintf(format, args...))
	}
	switch {
	case v.Name == "" || v.ID == "":
		return fail(ErrInvalid, "empty name or ID")
	case v.NAA == [16]byte{} || v.Size <= 0 || v.Copies < 1 || v.Epoch < 1:
		return fail(ErrInvalid, "NAA, size, copies or epoch missing")
	case len(v.Placement) == 0 || v.Primary != v.Placement[0] || !slices.Contains(v.InSync, v.Primary):
		return fail(ErrInvalid, "the primary must be placed first and in sync")
	case len(v.Reservations) > maxReservations:
		return fail(ErrTooLarge, "reservation state of %d bytes", len(v.Reservations))
	case s.Deleted(v.ID):
		return fail(ErrConflict, "volume ID %s was deleted", v.ID)
	}
	if _, ok := s.Volumes[v.Name]; ok {
		return fmt.Errorf("import volume %s: %w", v.Name, ErrExists)
	}
	for _, name := range s.VolumeNames() {
		if o := s.Volumes[name]; o.ID == v.ID || o.NAA == v.NAA {
			return fail(ErrExists, "ID or NAA is volume %s's", name)
		}
	}
	for _, n := range v.Placement {
		if err := s.checkDataNode(n); err != nil {
			return fmt.Errorf("import volume %s: %w", v.Name, err)
		}
	}
	for _, n := range v.InSync {
		if !slices.Contains(v.Placement, n) {
			return fail(ErrInvalid, "in-sync node %s is not placed", n)
		}
	}
	for n, id := range v.CopyIDs {
		if id == "" || !slices.Contains(v.Placement, n) {
			return fail(ErrInvalid, "copy ID %q of node %s: empty or the node is not placed", id, n)
		}
	}
	for i, sn := range v.Snapshots {
		if sn.Name == "" || slices.ContainsFunc(v.Snapshots[:i], func(o Snapshot) bool { return o.Name == sn.Name }) {
			return fail(ErrInvalid, "snapshot name %q empty or repeated", sn.Name)
		}
	}
	if v.Source != nil {
		src, ok := s.Volumes[v.Source.Volume]
		if !ok {
			return fail(ErrNotFound, "clone source volume %s", v.Source.Volume)
		}
		snap, ok := src.Snapshot(v.Source.Snapshot)
		if !ok {
			return fail(ErrNotFound, "clone source snapshot %s of volume %s", v.Source.Snapshot, v.Source.Volume)
		}
		if snap.Pending {
			return fail(ErrConflict, "clone source snapshot %s of volume %s is not complete yet", v.Source.Snapshot, v.Source.Volume)
		}
	}
	s.Volumes[v.Name] = v
	return nil
}

// RaftLogger returns an hclog.Logger that writes raft's output (and the
// network transport's) to l, with routine messages at debug level.
func RaftLogger(l *slog.Logger) hclog.Logger { return newHCLogAdapter(l) }

// Noop changes nothing: committing it (Sync) proves this node has applied
// everything committed before.
type Noop struct{}

func (Noop) kind() string         { return "noop" }
func (Noop) apply(s *State) error { return nil }

// Sync returns once this node's State includes every change committed
// before the call (a no-op committed through the leader and applied
// here). A node that restarts calls it before acting on the catalog: raft
// replays committed entries only once it hears from a leader, and a
// partly replayed catalog must not decide what is served.
func (c *Cluster) Sync(ctx context.Context) error {
	_, err := c.Propose(ctx, Noop{})
	return err
}
