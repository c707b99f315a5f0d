package cluster

import (
	"maps"
	"slices"
	"sort"
	"time"
)

// Role is what a node does in the cluster.
type Role string

const (
	// RoleData: the node holds copies of volumes and serves them.
	RoleData Role = "data"
	// RoleWitness: the node votes in raft and holds no data, so that two
	// data nodes and a witness keep a majority when one data node fails.
	RoleWitness Role = "witness"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r == RoleData || r == RoleWitness }

// Node is a member of the cluster. Addresses are host:port.
type Node struct {
	Name   string    `json:"name"`
	Role   Role      `json:"role"`
	Gossip string    `json:"gossip"` // memberlist
	Link   string    `json:"link"`   // raft, replication and RPC; the raft server address
	Portal string    `json:"portal"` // iSCSI
	API    string    `json:"api"`    // admin API
	Joined time.Time `json:"joined"` // when it was first admitted
	// Port numbers the node's iSCSI target port, the same for every
	// volume: its portal group tag, relative target port identifier and
	// target port group (ALUA). The leader gives it (State.NextPort) when
	// it admits the node, or later to a node admitted before numbers
	// existed; it never changes and is never given to another node. 0:
	// none yet (the node then redirects logins to the primary).
	Port uint16 `json:"port,omitempty"`
}

// Export is how a volume is offered to initiators: CHAP (one-way and
// mutual) and the initiator allow list (empty: everyone).
type Export struct {
	CHAPUser     string   `json:"chap_user"`
	CHAPSecret   string   `json:"chap_secret"`
	MutualUser   string   `json:"mutual_user"`
	MutualSecret string   `json:"mutual_secret"`
	Allow        []string `json:"allow"`
}

// Snapshot is a read-only point-in-time image of a volume, the same on
// every copy.
type Snapshot struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Size    int64     `json:"size"` // the volume's size when it was taken
	// Pending: recorded before it is taken on the copies and not yet
	// committed (CommitSnapshot); it may be missing on some of them, so
	// nothing is cloned from it.
	Pending bool `json:"pending,omitempty"`
}

// CloneSource names the snapshot a clone is based on.
type CloneSource struct {
	Volume   string `json:"volume"`
	Snapshot string `json:"snapshot"`
	// Taken: the snapshot was taken for this clone (none was named), so
	// it is deleted with the clone.
	Taken bool `json:"taken,omitempty"`
}

// Volume is a volume as the whole cluster sees it: identity, export, where
// its copies are and which of them may serve.
type Volume struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	NAA     [16]byte  `json:"naa"`
	Serial  string    `json:"serial"`
	Size    int64     `json:"size"`
	Created time.Time `json:"created"`
	Export  Export    `json:"export"`
	// Copies is the desired number of full copies (layout mirror:N).
	Copies int `json:"copies"`
	// Placement lists the nodes holding or building a copy, the primary
	// first. It may hold more than Copies nodes while a copy moves.
	Placement []string `json:"placement"`
	// Primary is the node serving the volume; it is in Placement and
	// InSync.
	Primary string `json:"primary"`
	// Epoch is bumped whenever the primary changes; the first primary has
	// epoch 1. Replicas refuse writes of older epochs.
	Epoch uint64 `json:"epoch"`
	// InSync lists the nodes whose copy is identical to the primary's
	// (always including the primary), in Placement order. A write is
	// acknowledged only when every one of them has it.
	InSync []string `json:"in_sync"`
	// CopyIDs maps a node to the ID of its local copy, made at random when
	// the copy is created: a copy that was lost and made again (a new,
	// empty one) has a new ID, so it is never taken for the in-sync copy
	// it replaces.
	CopyIDs map[string]string `json:"copy_ids,omitempty"`
	// Snapshots, oldest first.
	Snapshots []Snapshot `json:"snapshots"`
	// Source is the snapshot a clone is based on; nil for other volumes.
	Source *CloneSource `json:"source,omitempty"`
	// Reservations is the SCSI persistent reservation state, opaque here.
	Reservations []byte `json:"reservations"`
	// Pending is an operation in the write stream (e.g. "revert:snap1")
	// that the primary must finish (run again) before it serves; empty:
	// none.
	Pending string `json:"pending,omitempty"`
}

// State is the cluster catalog: everything that must be the same on every
// node. Index is the raft log index of the last command applied to it.
type State struct {
	ClusterID string `json:"cluster_id"`
	// LeaseMS is the cluster's lease duration (Init); 0 in catalogs from
	// before it was kept, which use DefaultLeaseMS.
	LeaseMS int64 `json:"lease_ms,omitempty"`
	// PortsGiven is the highest target port number ever given (Node.Port).
	PortsGiven uint16            `json:"ports_given,omitempty"`
	Index      uint64            `json:"index"`
	Nodes      map[string]Node   `json:"nodes"`
	Volumes    map[string]Volume `json:"volumes"`
	// Tombstones are the IDs of deleted volumes, oldest first (at most
	// maxTombstones): a node that was down when a volume was deleted
	// deletes its copy when it comes back, and never mistakes a copy the
	// catalog never knew for a deleted one.
	Tombstones []string `json:"tombstones,omitempty"`
}

// maxTombstones bounds State.Tombstones.
const maxTombstones = 10000

// Deleted reports whether the volume with ID id was deleted.
func (s State) Deleted(id string) bool { return slices.Contains(s.Tombstones, id) }

// newState returns an empty catalog.
func newState() State {
	return State{Nodes: map[string]Node{}, Volumes: map[string]Volume{}}
}

// Clone returns a deep copy of s: nothing in it shares memory with s.
func (s State) Clone() State {
	c := s // the scalar fields
	c.Nodes, c.Volumes = make(map[string]Node, len(s.Nodes)), make(map[string]Volume, len(s.Volumes))
	for k, n := range s.Nodes {
		c.Nodes[k] = n
	}
	for k, v := range s.Volumes {
		c.Volumes[k] = v.Clone()
	}
	c.Tombstones = slices.Clone(s.Tombstones)
	return c
}

// Clone returns a deep copy of v.
func (v Volume) Clone() Volume {
	v.Export.Allow = slices.Clone(v.Export.Allow)
	v.Placement = slices.Clone(v.Placement)
	v.InSync = slices.Clone(v.InSync)
	v.CopyIDs = maps.Clone(v.CopyIDs)
	v.Snapshots = slices.Clone(v.Snapshots)
	v.Reservations = slices.Clone(v.Reservations)
	if v.Source != nil {
		src := *v.Source
		v.Source = &src
	}
	return v
}

// NodeNames returns the names of the nodes, sorted.
func (s State) NodeNames() []string { return sortedKeys(s.Nodes) }

// VolumeNames returns the names of the volumes, sorted.
func (s State) VolumeNames() []string { return sortedKeys(s.Volumes) }

// Snapshot returns the volume's snapshot with the given name.
func (v Volume) Snapshot(name string) (Snapshot, bool) {
	for _, s := range v.Snapshots {
		if s.Name == name {
			return s, true
		}
	}
	return Snapshot{}, false
}

// IsInSync reports whether node's copy is in the in-sync set.
func (v Volume) IsInSync(node string) bool { return slices.Contains(v.InSync, node) }

// Holds reports whether node holds (or builds) a copy.
func (v Volume) Holds(node string) bool { return slices.Contains(v.Placement, node) }

// ClonesOf returns the names of the volumes based on a snapshot of volume
// (any snapshot if snapshot is empty), sorted.
func (s State) ClonesOf(volume, snapshot string) []string {
	var names []string
	for _, name := range s.VolumeNames() {
		src := s.Volumes[name].Source
		if src != nil && src.Volume == volume && (snapshot == "" || src.Snapshot == snapshot) {
			names = append(names, name)
		}
	}
	return names
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// without returns a new slice: list without name.
func without(list []string, name string) []string {
	out := make([]string, 0, len(list))
	for _, n := range list {
		if n != name {
			out = append(out, n)
		}
	}
	return out
}

// ordered returns a new slice of the members of set, in the order of order.
func ordered(order []string, set []string) []string {
	out := make([]string, 0, len(set))
	for _, n := range order {
		if slices.Contains(set, n) {
			out = append(out, n)
		}
	}
	return out
}
