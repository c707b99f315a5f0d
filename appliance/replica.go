package appliance

import (
	"context"
	"encoding/json"
	"fmt"
	"net"

	"github.com/hashicorp/raft"

	"tandem.io/tandem/replication"
	"tandem.io/tandem/replication/link"
	"tandem.io/tandem/volume"
)

// The node's side of replication: what a replica serves (its local copies,
// operations in the write stream, its accepted epochs) and what a primary
// keeps (dirty maps), all in the local store; and the dialers that reach
// other nodes over authenticated links.

// barrierOp is an operation a primary sends in a volume's write stream,
// so that every copy applies it at the same point: a snapshot, a revert or
// a resize.
type barrierOp struct {
	Op       string `json:"op"` // "snapshot", "revert", "resize"
	Snapshot string `json:"snapshot,omitempty"`
	// ID is the catalog's ID of a new snapshot, kept with every copy's.
	ID   string `json:"id,omitempty"`
	Size int64  `json:"size,omitempty"`
}

func (o barrierOp) encode() []byte {
	b, err := json.Marshal(o)
	if err != nil {
		panic(err) // a struct of strings and ints always encodes
	}
	return b
}

func decodeBarrier(b []byte) (barrierOp, error) {
	var o barrierOp
	if err := json.Unmarshal(b, &o); err != nil {
		return o, fmt.Errorf("barrier operation: %w", err)
	}
	switch o.Op {
	case "snapshot", "revert":
		if err := volume.ValidateName(o.Snapshot); err != nil {
			return o, fmt.Errorf("barrier %s: snapshot name: %w", o.Op, err)
		}
	case "resize":
		if err := volume.ValidateSize(o.Size); err != nil {
			return o, fmt.Errorf("barrier resize: %w", err)
		}
	default:
		return o, fmt.Errorf("unknown barrier operation %q", o.Op)
	}
	return o, nil
}

// apply runs the operation on the local copy of the volume named name.
func (o barrierOp) apply(ctx context.Context, s *volume.Store, name string) error {
	switch o.Op {
	case "snapshot":
		_, err := s.SnapshotAs(ctx, name, o.Snapshot, o.ID)
		return err
	case "revert":
		return s.Revert(ctx, name, o.Snapshot, nil)
	case "resize":
		info, err := s.Get(name)
		if err != nil {
			return err
		}
		if info.Size >= o.Size {
			return nil
		}
		_, err = s.Resize(ctx, name, o.Size)
		return err
	}
	return fmt.Errorf("unknown barrier operation %q", o.Op)
}

// replicaCopies is what this node serves to primaries.
type replicaCopies struct{ n *Node }

// Copy gives a primary this node's copy of a volume, if it is the copy the
// catalog knows, complete (every snapshot), and not served by a mirror of
// this node's own (a primary deposed without knowing it yet must not have
// its copy written under it: the new primary drops it instead).
func (r replicaCopies) Copy(volumeID string) (replication.Copy, error) {
	n := r.n
	if n.cfg.Witness {
		return nil, fmt.Errorf("node %s is a witness: it holds no copies", n.cfg.Name)
	}
	name, err := n.store.NameOf(volumeID)
	if err != nil {
		return nil, err
	}
	v, ok := n.cluster.State().Volumes[name]
	if !ok || v.ID != volumeID {
		return nil, fmt.Errorf("volume %s is not in this node's catalog (yet)", volumeID)
	}
	n.mu.Lock()
	s := n.vols[name]
	n.mu.Unlock()
	if s != nil && s.spread() != nil {
		return nil, fmt.Errorf("node %s still serves volume %q as its primary", n.cfg.Name, name)
	}
	if err := n.copyUsable(v); err != nil {
		return nil, err
	}
	return n.store.DeviceByID(volumeID)
}

func (r replicaCopies) Barrier(ctx context.Context, volumeID string, op []byte) error {
	o, err := decodeBarrier(op)
	if err != nil {
		return err
	}
	name, err := r.n.store.NameOf(volumeID)
	if err != nil {
		return err
	}
	return o.apply(ctx, r.n.store, name)
}

// storeEpochs keeps accepted epochs in the local catalog.
type storeEpochs struct{ s *volume.Store }

func (e storeEpochs) Epoch(volumeID string) (uint64, error) { return e.s.AcceptedEpoch(volumeID) }
func (e storeEpochs) SetEpoch(volumeID string, epoch uint64) error {
	return e.s.SetAcceptedEpoch(volumeID, epoch)
}

// storeDirty keeps dirty maps in the local catalog.
type storeDirty struct{ s *volume.Store }

func (d storeDirty) Mark(volumeID, replica string, regions []uint64) error {
	return d.s.MarkDirty(volumeID, replica, regions)
}
func (d storeDirty) Dirty(volumeID, replica string) ([]uint64, error) {
	return d.s.DirtyRegions(volumeID, replica)
}
func (d storeDirty) Clear(volumeID, replica string, regions []uint64) error {
	return d.s.ClearDirty(volumeID, replica, regions)
}

// replDialer reaches a node's replication server by its name.
type replDialer struct{ n *Node }

func (d replDialer) Dial(ctx context.Context, node string) (net.Conn, error) {
	rec, ok := d.n.cluster.State().Nodes[node]
	if !ok || rec.Link == "" {
		return nil, fmt.Errorf("node %q is not in the catalog", node)
	}
	return link.Dial(ctx, rec.Link, link.PurposeReplication, d.n.linkConfig())
}

// rpcDialer reaches the raft leader's proposal server by its raft address
// (its link address).
type rpcDialer struct{ n *Node }

func (d rpcDialer) Dial(ctx context.Context, addr raft.ServerAddress) (net.Conn, error) {
	return link.Dial(ctx, string(addr), link.PurposeRPC, d.n.linkConfig())
}
