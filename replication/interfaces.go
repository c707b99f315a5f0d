package replication

import (
	"context"
	"net"

	"tandem.io/tandem/volume/block"
)

// Copy is a node's local copy of a volume (volume.Volume satisfies it).
type Copy interface {
	block.Device
	block.Unmapper
	block.Mapper
}

// Copies is what a replica node serves: its local copies, by volume ID.
type Copies interface {
	// Copy returns the node's copy of the volume, or an error if it holds
	// none. The copy stays valid across barriers (it is looked up again
	// after each one).
	Copy(volumeID string) (Copy, error)
	// Barrier applies an operation (snapshot, resize, revert...: opaque
	// bytes, at most MaxOpLen) to the local copy. It is called in stream
	// order: every write the primary completed before the barrier has been
	// applied, and none after it has arrived yet.
	Barrier(ctx context.Context, volumeID string, op []byte) error
}

// Epochs persists, per volume ID, the highest epoch the node accepted.
// SetEpoch is durable when it returns. Calls for one volume are never
// concurrent.
type Epochs interface {
	Epoch(volumeID string) (uint64, error)
	SetEpoch(volumeID string, epoch uint64) error
}

// DirtyLog persists, per (volume ID, replica node), the regions (offset /
// region size) the replica misses. Mark and Clear are durable when they
// return; the Mirror never calls them concurrently for one replica. Clear
// with no regions removes the replica's map altogether.
type DirtyLog interface {
	Mark(volumeID, replica string, regions []uint64) error
	Dirty(volumeID, replica string) ([]uint64, error)
	Clear(volumeID, replica string, regions []uint64) error
}

// Dialer opens an authenticated connection to a node's replication
// endpoint.
type Dialer interface {
	Dial(ctx context.Context, node string) (net.Conn, error)
}

// Lease says whether this node may serve the volume as its primary now:
// the cluster's lease on the node, and the catalog still naming it primary
// at the Mirror's epoch. A primary that lost it must not serve reads (a
// replica may have been promoted in its place and acknowledged newer
// writes) and does not start writes.
type Lease interface {
	// Await returns nil once the lease holds, or ctx's error when it ends
	// first. An I/O waits in it rather than failing: a lease that comes
	// back lets it go on, and a primary that lost its role for good closes
	// its sessions, so the initiator retries elsewhere (no error status).
	Await(ctx context.Context) error
}
