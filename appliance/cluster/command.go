package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"time"
)

// Command is a change to the catalog: one of the types below, proposed with
// Cluster.Propose and applied by every node in log order. Applying checks
// the command against the state first and changes nothing when it does not
// apply, returning an error wrapping ErrInvalid, ErrNotFound, ErrExists,
// ErrConflict, ErrStaleEpoch or ErrNotPrimary. Applying is deterministic: it
// reads no clock and no randomness (identities, times and sizes come in the
// command), so every node reaches the same state.
//
// Adding things to a set and removing things from it (AddCopy, RemoveCopy,
// MarkInSync, DropReplica, LeaveInSync, SetCopyID, CommitSnapshot,
// SetPending) succeed without change when already done, so a requester may
// retry after ErrOutcomeUnknown.
type Command interface {
	// kind names the command on the wire.
	kind() string
	// apply checks the command against s and, if it applies, changes s.
	// It changes nothing when it returns an error.
	apply(s *State) error
}

// Limits of what a command may carry.
const (
	// maxReservations bounds SetReservations.Data.
	maxReservations = 1 << 20
	// maxCommand bounds an encoded command (it must fit a forwarded frame).
	maxCommand = maxFrame - 1024
	// maxPendingOp bounds SetPending.Op.
	maxPendingOp = 4096
)

// Init names the cluster. It applies once: the first leader of a new
// cluster commits it with a fresh ID; another ID later is refused.
type Init struct {
	ClusterID string `json:"cluster_id"`
	// LeaseMS is the cluster's lease duration in milliseconds, fixed for
	// its life (0: DefaultLeaseMS): every holder and every leader must use
	// the same, or a leader could count a lease ended that still runs.
	LeaseMS int64 `json:"lease_ms,omitempty"`
}

// PutNode adds a node to the catalog or updates its addresses and role.
// Joined is kept from the first PutNode of the node. A node holding copies
// cannot become a witness.
type PutNode struct {
	Node Node `json:"node"`
}

// RemoveNode removes a node from the catalog and from every volume's
// placement, in-sync set and copy IDs. It is refused while the node is the primary of
// a volume.
type RemoveNode struct {
	Name string `json:"name"`
}

// CreateVolume adds a volume. Its identity (ID, NAA, serial, created time)
// is decided by the proposer. Placement[0] becomes the primary, with epoch 1
// and itself as the only in-sync copy; the other placed nodes build their
// copies and join the in-sync set with MarkInSync. It starts with no copy
// IDs (SetCopyID). A clone's source snapshot must be committed.
type CreateVolume struct {
	Name      string       `json:"name"`
	ID        string       `json:"id"`
	NAA       [16]byte     `json:"naa"`
	Serial    string       `json:"serial"`
	Size      int64        `json:"size"`
	Created   time.Time    `json:"created"`
	Export    Export       `json:"export"`
	Copies    int          `json:"copies"`
	Placement []string     `json:"placement"`
	Source    *CloneSource `json:"source,omitempty"` // set for a clone
	// InSync, for a clone only, lists the placed nodes whose copy is in
	// sync from the start: the clone is made from the source's snapshot,
	// which every in-sync copy of the source holds. Empty: the primary.
	InSync []string `json:"in_sync,omitempty"`
}

// DeleteVolume removes a volume; refused while clones of it exist.
type DeleteVolume struct {
	Name string `json:"name"`
}

// ResizeVolume grows a volume (the same size again changes nothing).
type ResizeVolume struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// SetExport replaces a volume's CHAP settings and allow list.
type SetExport struct {
	Volume string `json:"volume"`
	Export Export `json:"export"`
}

// SetCopies changes the desired number of copies (layout mirror:N); the
// controller then adds or removes copies.
type SetCopies struct {
	Volume string `json:"volume"`
	Copies int    `json:"copies"`
}

// AddSnapshot records a snapshot; its name and ID must be new in the
// volume. It is added Pending before it is taken on the copies, then
// committed (CommitSnapshot) once every in-sync copy has it.
type AddSnapshot struct {
	Volume   string   `json:"volume"`
	Snapshot Snapshot `json:"snapshot"`
}

// DeleteSnapshot removes a snapshot, pending or not; refused while a clone
// is based on it.
type DeleteSnapshot struct {
	Volume string `json:"volume"`
	Name   string `json:"name"`
}

// CommitSnapshot clears a snapshot's Pending flag: it was taken on every
// in-sync copy. Committing it again changes nothing.
type CommitSnapshot struct {
	Volume string `json:"volume"`
	Name   string `json:"name"`
}

// DropReplica takes Node out of the in-sync set: its copy missed writes.
// Only the primary of the current epoch may ask (By, Epoch), and not for
// itself, so a deposed primary cannot drop anyone.
type DropReplica struct {
	Volume string `json:"volume"`
	Epoch  uint64 `json:"epoch"`
	By     string `json:"by"`
	Node   string `json:"node"`
}

// MarkInSync puts Node, which holds a copy, into the in-sync set once the
// primary has brought it up to date. Same checks as DropReplica; CopyID is
// the copy the primary brought up to date and must be the one the catalog
// knows for Node (SetCopyID), so a copy replaced meanwhile is not marked.
type MarkInSync struct {
	Volume string `json:"volume"`
	Epoch  uint64 `json:"epoch"`
	By     string `json:"by"`
	Node   string `json:"node"`
	CopyID string `json:"copy_id"`
}

// LeaveInSync takes Node, not the primary, out of the in-sync set at its
// own request: a deposed primary whose copy may hold writes never
// acknowledged. Epoch is the volume's epoch the node saw; an older one is
// refused (the node may have been brought in sync again since). Not being
// in sync changes nothing.
type LeaveInSync struct {
	Volume string `json:"volume"`
	Node   string `json:"node"`
	Epoch  uint64 `json:"epoch"`
}

// SetCopyID records the ID of Node's local copy (Node is placed). The first
// report just records it. A different ID means the copy was replaced by a
// new one, which must be rebuilt: Node leaves the in-sync set, and for the
// primary it is refused (move the primary to an in-sync copy first).
type SetCopyID struct {
	Volume string `json:"volume"`
	Node   string `json:"node"`
	CopyID string `json:"copy_id"`
}

// SetPending records the operation the primary must finish before it
// serves (Op, e.g. "revert:snap1"), or clears it (Op empty). Only the
// primary of Epoch (By) may ask; another operation while one is pending
// is refused.
type SetPending struct {
	Volume string `json:"volume"`
	Epoch  uint64 `json:"epoch"`
	By     string `json:"by"`
	Op     string `json:"op"`
}

// AddCopy places a new copy on Node (a data node); it is built by the
// primary and is not in sync until MarkInSync. A new copy is built from
// the live data only, so it is refused on a volume with snapshots.
type AddCopy struct {
	Volume string `json:"volume"`
	Node   string `json:"node"`
}

// RemoveCopy removes Node's copy from the placement, the in-sync set and
// the copy IDs.
// The primary's copy cannot be removed (move the primary first), nor the
// last in-sync copy.
type RemoveCopy struct {
	Volume string `json:"volume"`
	Node   string `json:"node"`
}

// SetPrimary makes Node, an in-sync copy, the primary: the epoch becomes
// Epoch+1 (Epoch must be the current one) and Node moves to the front of
// the placement. For a planned move the old primary stays in sync; with
// Failover (the old primary is gone and may have had writes in flight that
// reached some copies and not others) Node is left the only copy in sync,
// and the others are rebuilt from it. Naming the current primary changes
// nothing.
type SetPrimary struct {
	Volume   string `json:"volume"`
	Epoch    uint64 `json:"epoch"`
	Node     string `json:"node"`
	Failover bool   `json:"failover"`
}

// SetReservations replaces the volume's SCSI persistent reservation state,
// written by the primary of Epoch.
type SetReservations struct {
	Volume string `json:"volume"`
	Epoch  uint64 `json:"epoch"`
	Data   []byte `json:"data"`
}

// Compile-time checks that every command is a Command.
var (
	_ Command = Init{}
	_ Command = PutNode{}
	_ Command = RemoveNode{}
	_ Command = CreateVolume{}
	_ Command = DeleteVolume{}
	_ Command = ResizeVolume{}
	_ Command = SetExport{}
	_ Command = SetCopies{}
	_ Command = AddSnapshot{}
	_ Command = DeleteSnapshot{}
	_ Command = DropReplica{}
	_ Command = MarkInSync{}
	_ Command = AddCopy{}
	_ Command = RemoveCopy{}
	_ Command = SetPrimary{}
	_ Command = SetReservations{}
	_ Command = CommitSnapshot{}
	_ Command = LeaveInSync{}
	_ Command = SetCopyID{}
	_ Command = SetPending{}
)

func (Init) kind() string            { return "init" }
func (PutNode) kind() string         { return "put-node" }
func (RemoveNode) kind() string      { return "remove-node" }
func (CreateVolume) kind() string    { return "create-volume" }
func (DeleteVolume) kind() string    { return "delete-volume" }
func (ResizeVolume) kind() string    { return "resize-volume" }
func (SetExport) kind() string       { return "set-export" }
func (SetCopies) kind() string       { return "set-copies" }
func (AddSnapshot) kind() string     { return "add-snapshot" }
func (DeleteSnapshot) kind() string  { return "delete-snapshot" }
func (DropReplica) kind() string     { return "drop-replica" }
func (MarkInSync) kind() string      { return "mark-in-sync" }
func (AddCopy) kind() string         { return "add-copy" }
func (RemoveCopy) kind() string      { return "remove-copy" }
func (SetPrimary) kind() string      { return "set-primary" }
func (SetReservations) kind() string { return "set-reservations" }
func (CommitSnapshot) kind() string  { return "commit-snapshot" }
func (LeaveInSync) kind() string     { return "leave-in-sync" }
func (SetCopyID) kind() string       { return "set-copy-id" }
func (SetPending) kind() string      { return "set-pending" }

// commandVersion is the version of the command encoding.
const commandVersion = 1

// envelope is an encoded command: {"v":1,"kind":"put-node","cmd":{...}}.
type envelope struct {
	V    int             `json:"v"`
	Kind string          `json:"kind"`
	Cmd  json.RawMessage `json:"cmd"`
}

// encodeCommand encodes cmd for the raft log.
func encodeCommand(cmd Command) ([]byte, error) {
	if cmd == nil {
		return nil, fmt.Errorf("encode command: %w: nil command", ErrInvalid)
	}
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode %s command: %w", cmd.kind(), err)
	}
	p, err := json.Marshal(envelope{V: commandVersion, Kind: cmd.kind(), Cmd: body})
	if err != nil {
		return nil, fmt.Errorf("encode %s command: %w", cmd.kind(), err)
	}
	if len(p) > maxCommand {
		return nil, fmt.Errorf("encode %s command: %w: %d bytes, at most %d", cmd.kind(), ErrTooLarge, len(p), maxCommand)
	}
	return p, nil
}

// decodeCommand decodes a command encoded by encodeCommand. Unknown kinds,
// versions and fields are refused: a node must not apply a command it only
// partly understands.
func decodeCommand(p []byte) (Command, error) {
	var env envelope
	if err := strictUnmarshal(p, &env); err != nil {
		return nil, fmt.Errorf("decode command: %w: %v", ErrInvalid, err)
	}
	if env.V != commandVersion {
		return nil, fmt.Errorf("decode command: %w: version %d (this node knows %d)", ErrUnsupported, env.V, commandVersion)
	}
	switch env.Kind {
	case Init{}.kind():
		return decodeAs[Init](env)
	case PutNode{}.kind():
		return decodeAs[PutNode](env)
	case RemoveNode{}.kind():
		return decodeAs[RemoveNode](env)
	case CreateVolume{}.kind():
		return decodeAs[CreateVolume](env)
	case DeleteVolume{}.kind():
		return decodeAs[DeleteVolume](env)
	case ResizeVolume{}.kind():
		return decodeAs[ResizeVolume](env)
	case SetExport{}.kind():
		return decodeAs[SetExport](env)
	case SetCopies{}.kind():
		return decodeAs[SetCopies](env)
	case AddSnapshot{}.kind():
		return decodeAs[AddSnapshot](env)
	case DeleteSnapshot{}.kind():
		return decodeAs[DeleteSnapshot](env)
	case DropReplica{}.kind():
		return decodeAs[DropReplica](env)
	case MarkInSync{}.kind():
		return decodeAs[MarkInSync](env)
	case AddCopy{}.kind():
		return decodeAs[AddCopy](env)
	case RemoveCopy{}.kind():
		return decodeAs[RemoveCopy](env)
	case SetPrimary{}.kind():
		return decodeAs[SetPrimary](env)
	case SetReservations{}.kind():
		return decodeAs[SetReservations](env)
	case CommitSnapshot{}.kind():
		return decodeAs[CommitSnapshot](env)
	case LeaveInSync{}.kind():
		return decodeAs[LeaveInSync](env)
	case SetCopyID{}.kind():
		return decodeAs[SetCopyID](env)
	case SetPending{}.kind():
		return decodeAs[SetPending](env)
	case ImportVolume{}.kind():
		return decodeAs[ImportVolume](env)
	case Noop{}.kind():
		return decodeAs[Noop](env)
	case LeaseProof{}.kind():
		return decodeAs[LeaseProof](env)
	}
	return nil, fmt.Errorf("decode command: %w: kind %q", ErrUnsupported, env.Kind)
}

func decodeAs[T Command](env envelope) (Command, error) {
	var cmd T
	if err := strictUnmarshal(env.Cmd, &cmd); err != nil {
		return nil, fmt.Errorf("decode %s command: %w: %v", env.Kind, ErrInvalid, err)
	}
	return cmd, nil
}

// strictUnmarshal decodes one JSON value into v, refusing unknown fields
// and trailing data.
func strictUnmarshal(p []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}

func (c Init) apply(s *State) error {
	if c.ClusterID == "" {
		return fmt.Errorf("init: %w: empty cluster ID", ErrInvalid)
	}
	if s.ClusterID == c.ClusterID {
		return nil
	}
	if s.ClusterID != "" {
		return fmt.Errorf("init cluster %s: %w: the cluster is already initialized as %s", c.ClusterID, ErrExists, s.ClusterID)
	}
	if c.LeaseMS < 0 || c.LeaseMS > 60_000 {
		return fmt.Errorf("init cluster %s: %w: lease of %d ms", c.ClusterID, ErrInvalid, c.LeaseMS)
	}
	s.ClusterID = c.ClusterID
	s.LeaseMS = c.LeaseMS
	return nil
}

func (c PutNode) apply(s *State) error {
	n := c.Node
	if err := checkNode(n); err != nil {
		return fmt.Errorf("put node: %w", err)
	}
	if old, ok := s.Nodes[n.Name]; ok {
		if n.Role == RoleWitness && old.Role != RoleWitness {
			if held := s.copiesOn(n.Name); len(held) > 0 {
				return fmt.Errorf("put node %s: %w: it holds copies of %v and cannot become a witness", n.Name, ErrConflict, held)
			}
		}
		n.Joined = old.Joined
		if old.Port != 0 {
			n.Port = old.Port // given once
		}
	}
	if n.Port != 0 {
		for name, other := range s.Nodes {
			if name != n.Name && other.Port == n.Port {
				return fmt.Errorf("put node %s: %w: target port %d is node %s's", n.Name, ErrConflict, n.Port, name)
			}
		}
		s.PortsGiven = max(s.PortsGiven, n.Port)
	}
	s.Nodes[n.Name] = n
	return nil
}

// NextPort is the target port number the leader gives the next node that
// has none: above every number given so far, removed nodes' included (a
// removed node still running must not share a number with a live one).
func (s State) NextPort() uint16 {
	top := s.PortsGiven
	for _, n := range s.Nodes {
		top = max(top, n.Port)
	}
	return top + 1
}

// checkNode checks what a node record needs: a name, a role, a link
// address, and well-formed other addresses.
func checkNode(n Node) error {
	if n.Name == "" {
		return fmt.Errorf("%w: empty node name", ErrInvalid)
	}
	if !n.Role.Valid() {
		return fmt.Errorf("node %s: %w: role %q (want %q or %q)", n.Name, ErrInvalid, n.Role, RoleData, RoleWitness)
	}
	if n.Link == "" {
		return fmt.Errorf("node %s: %w: empty link address", n.Name, ErrInvalid)
	}
	for _, a := range []struct{ what, addr string }{{"link", n.Link}, {"gossip", n.Gossip}, {"portal", n.Portal}, {"API", n.API}} {
		if a.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("node %s: %w: %s address %q is not host:port", n.Name, ErrInvalid, a.what, a.addr)
		}
	}
	return nil
}

// copiesOn returns the sorted names of the volumes placed on node.
func (s State) copiesOn(node string) []string {
	var names []string
	for _, name := range s.VolumeNames() {
		if s.Volumes[name].Holds(node) {
			names = append(names, name)
		}
	}
	return names
}

func (c RemoveNode) apply(s *State) error {
	if _, ok := s.Nodes[c.Name]; !ok {
		return fmt.Errorf("remove node %s: %w", c.Name, ErrNotFound)
	}
	for _, name := range s.VolumeNames() {
		if s.Volumes[name].Primary == c.Name {
			return fmt.Errorf("remove node %s: %w: it is the primary of volume %s: move the primary of volume %s first", c.Name, ErrConflict, name, name)
		}
	}
	for name, v := range s.Volumes {
		if _, ok := v.CopyIDs[c.Name]; ok || v.Holds(c.Name) || v.IsInSync(c.Name) {
			v.Placement = without(v.Placement, c.Name)
			v.InSync = without(v.InSync, c.Name)
			v.CopyIDs = withoutKey(v.CopyIDs, c.Name)
			s.Volumes[name] = v
		}
	}
	delete(s.Nodes, c.Name)
	return nil
}

func (c CreateVolume) apply(s *State) error {
	if c.Name == "" {
		return fmt.Errorf("create volume: %w: empty name", ErrInvalid)
	}
	fail := func(err error, format string, args ...any) error {
		return fmt.Errorf("create volume %s: %w: %s", c.Name, err, fmt.Sprintf(format, args...))
	}
	switch {
	case c.ID == "":
		return fail(ErrInvalid, "empty ID")
	case c.NAA == [16]byte{}:
		return fail(ErrInvalid, "zero NAA identifier")
	case c.Size <= 0:
		return fail(ErrInvalid, "size %d", c.Size)
	case c.Copies < 1:
		return fail(ErrInvalid, "%d copies (want at least 1)", c.Copies)
	case len(c.Placement) == 0:
		return fail(ErrInvalid, "empty placement")
	}
	if _, ok := s.Volumes[c.Name]; ok {
		return fmt.Errorf("create volume %s: %w", c.Name, ErrExists)
	}
	for _, name := range s.VolumeNames() {
		v := s.Volumes[name]
		if v.ID == c.ID {
			return fail(ErrExists, "ID %s is volume %s's", c.ID, name)
		}
		if v.NAA == c.NAA {
			return fail(ErrExists, "NAA %x is volume %s's", c.NAA, name)
		}
	}
	for i, node := range c.Placement {
		if slices.Contains(c.Placement[:i], node) {
			return fail(ErrInvalid, "node %s placed twice", node)
		}
		if err := s.checkDataNode(node); err != nil {
			return fmt.Errorf("create volume %s: %w", c.Name, err)
		}
	}
	if c.Source != nil {
		src, ok := s.Volumes[c.Source.Volume]
		if !ok {
			return fail(ErrNotFound, "clone source volume %s", c.Source.Volume)
		}
		snap, ok := src.Snapshot(c.Source.Snapshot)
		if !ok {
			return fail(ErrNotFound, "clone source snapshot %s of volume %s", c.Source.Snapshot, c.Source.Volume)
		}
		if snap.Pending {
			return fail(ErrConflict, "snapshot %s is not complete yet", snap.Name)
		}
		if c.Size < snap.Size {
			return fail(ErrInvalid, "size %d is smaller than its source snapshot's %d", c.Size, snap.Size)
		}
		for _, n := range c.InSync {
			if !slices.Contains(c.Placement, n) || !slices.Contains(src.InSync, n) {
				return fail(ErrInvalid, "node %s is not a placed node with an in-sync copy of the source", n)
			}
		}
	} else if len(c.InSync) > 0 {
		return fail(ErrInvalid, "only a clone starts with copies in sync")
	}
	v := Volume{
		Name: c.Name, ID: c.ID, NAA: c.NAA, Serial: c.Serial, Size: c.Size, Created: c.Created,
		Export: c.Export, Copies: c.Copies, Placement: slices.Clone(c.Placement),
		Primary: c.Placement[0], Epoch: 1, InSync: []string{c.Placement[0]},
	}
	for _, n := range c.Placement[1:] {
		if slices.Contains(c.InSync, n) {
			v.InSync = append(v.InSync, n)
		}
	}
	v.Export.Allow = slices.Clone(v.Export.Allow)
	if c.Source != nil {
		src := *c.Source
		v.Source = &src
	}
	s.Volumes[c.Name] = v
	return nil
}

// checkDataNode says why node cannot hold a copy, if it cannot.
func (s State) checkDataNode(node string) error {
	n, ok := s.Nodes[node]
	if !ok {
		return fmt.Errorf("node %s: %w", node, ErrNotFound)
	}
	if n.Role != RoleData {
		return fmt.Errorf("node %s: %w: a %s holds no copies", node, ErrConflict, n.Role)
	}
	return nil
}

// volume returns the named volume or an ErrNotFound error saying what op
// failed.
func (s State) volume(op, name string) (Volume, error) {
	v, ok := s.Volumes[name]
	if !ok {
		return Volume{}, fmt.Errorf("%s: volume %s: %w", op, name, ErrNotFound)
	}
	return v, nil
}

func (c DeleteVolume) apply(s *State) error {
	if _, err := s.volume("delete volume", c.Name); err != nil {
		return err
	}
	if clones := s.ClonesOf(c.Name, ""); len(clones) > 0 {
		return fmt.Errorf("delete volume %s: %w: clones %v are based on it", c.Name, ErrConflict, clones)
	}
	s.Tombstones = append(s.Tombstones, s.Volumes[c.Name].ID)
	if len(s.Tombstones) > maxTombstones {
		s.Tombstones = slices.Clone(s.Tombstones[len(s.Tombstones)-maxTombstones:])
	}
	delete(s.Volumes, c.Name)
	return nil
}

func (c ResizeVolume) apply(s *State) error {
	v, err := s.volume("resize volume", c.Name)
	if err != nil {
		return err
	}
	if c.Size < v.Size {
		return fmt.Errorf("resize volume %s to %d: %w: it has %d bytes and volumes only grow", c.Name, c.Size, ErrConflict, v.Size)
	}
	v.Size = c.Size
	s.Volumes[c.Name] = v
	return nil
}

func (c SetExport) apply(s *State) error {
	v, err := s.volume("set export", c.Volume)
	if err != nil {
		return err
	}
	v.Export = c.Export
	v.Export.Allow = slices.Clone(c.Export.Allow)
	s.Volumes[c.Volume] = v
	return nil
}

func (c SetCopies) apply(s *State) error {
	v, err := s.volume("set copies", c.Volume)
	if err != nil {
		return err
	}
	if c.Copies < 1 {
		return fmt.Errorf("set copies of volume %s: %w: %d copies (want at least 1)", c.Volume, ErrInvalid, c.Copies)
	}
	v.Copies = c.Copies
	s.Volumes[c.Volume] = v
	return nil
}

func (c AddSnapshot) apply(s *State) error {
	v, err := s.volume("add snapshot", c.Volume)
	if err != nil {
		return err
	}
	snap := c.Snapshot
	if snap.Name == "" || snap.ID == "" {
		return fmt.Errorf("add snapshot to volume %s: %w: empty snapshot name or ID", c.Volume, ErrInvalid)
	}
	for _, old := range v.Snapshots {
		if old.Name == snap.Name {
			return fmt.Errorf("add snapshot %s to volume %s: %w", snap.Name, c.Volume, ErrExists)
		}
		if old.ID == snap.ID {
			return fmt.Errorf("add snapshot %s to volume %s: %w: ID %s is snapshot %s's", snap.Name, c.Volume, ErrExists, snap.ID, old.Name)
		}
	}
	v.Snapshots = append(slices.Clip(v.Snapshots), snap)
	s.Volumes[c.Volume] = v
	return nil
}

func (c DeleteSnapshot) apply(s *State) error {
	v, err := s.volume("delete snapshot", c.Volume)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(v.Snapshots, func(sn Snapshot) bool { return sn.Name == c.Name })
	if i < 0 {
		return fmt.Errorf("delete snapshot %s of volume %s: %w", c.Name, c.Volume, ErrNotFound)
	}
	if clones := s.ClonesOf(c.Volume, c.Name); len(clones) > 0 {
		return fmt.Errorf("delete snapshot %s of volume %s: %w: clones %v are based on it", c.Name, c.Volume, ErrConflict, clones)
	}
	if v.Pending == "revert:"+c.Name {
		return fmt.Errorf("delete snapshot %s of volume %s: %w: a revert to it is not finished yet (its primary finishes it before it serves the volume)",
			c.Name, c.Volume, ErrConflict)
	}
	v.Snapshots = slices.Delete(slices.Clone(v.Snapshots), i, i+1)
	s.Volumes[c.Volume] = v
	return nil
}

// checkRequester checks a replica change asked by the primary of an epoch.
func checkRequester(op string, v Volume, epoch uint64, by, node string) error {
	if epoch != v.Epoch {
		return fmt.Errorf("%s %s of volume %s: %w: epoch %d, the volume is at %d", op, node, v.Name, ErrStaleEpoch, epoch, v.Epoch)
	}
	if by != v.Primary {
		return fmt.Errorf("%s %s of volume %s: %w: asked by %s, the primary is %s", op, node, v.Name, ErrNotPrimary, by, v.Primary)
	}
	if node == v.Primary {
		return fmt.Errorf("%s %s of volume %s: %w: it is the primary", op, node, v.Name, ErrConflict)
	}
	return nil
}

func (c DropReplica) apply(s *State) error {
	v, err := s.volume("drop replica", c.Volume)
	if err != nil {
		return err
	}
	if err := checkRequester("drop replica", v, c.Epoch, c.By, c.Node); err != nil {
		return err
	}
	if !v.IsInSync(c.Node) {
		return nil
	}
	v.InSync = without(v.InSync, c.Node)
	s.Volumes[c.Volume] = v
	return nil
}

func (c MarkInSync) apply(s *State) error {
	v, err := s.volume("mark in sync", c.Volume)
	if err != nil {
		return err
	}
	if err := checkRequester("mark in sync", v, c.Epoch, c.By, c.Node); err != nil {
		return err
	}
	if !v.Holds(c.Node) {
		return fmt.Errorf("mark %s in sync for volume %s: %w: it holds no copy", c.Node, c.Volume, ErrConflict)
	}
	if known := v.CopyIDs[c.Node]; known == "" || c.CopyID != known {
		return fmt.Errorf("mark %s in sync for volume %s: %w: copy %q, the catalog knows %q", c.Node, c.Volume, ErrConflict, c.CopyID, known)
	}
	if v.IsInSync(c.Node) {
		return nil
	}
	v.InSync = ordered(v.Placement, append(slices.Clone(v.InSync), c.Node))
	s.Volumes[c.Volume] = v
	return nil
}

func (c AddCopy) apply(s *State) error {
	v, err := s.volume("add copy", c.Volume)
	if err != nil {
		return err
	}
	if err := s.checkDataNode(c.Node); err != nil {
		return fmt.Errorf("add copy of volume %s: %w", c.Volume, err)
	}
	if v.Holds(c.Node) {
		return nil
	}
	if len(v.Snapshots) > 0 {
		return fmt.Errorf("add copy of volume %s on %s: %w: a new copy is built from the live data only: volume %s has snapshots", c.Volume, c.Node, ErrConflict, c.Volume)
	}
	v.Placement = append(slices.Clone(v.Placement), c.Node)
	s.Volumes[c.Volume] = v
	return nil
}

func (c RemoveCopy) apply(s *State) error {
	v, err := s.volume("remove copy", c.Volume)
	if err != nil {
		return err
	}
	if c.Node == v.Primary {
		return fmt.Errorf("remove copy %s of volume %s: %w: it is the primary; move the primary first", c.Node, c.Volume, ErrConflict)
	}
	if _, ok := v.CopyIDs[c.Node]; !ok && !v.Holds(c.Node) && !v.IsInSync(c.Node) {
		return nil
	}
	if v.IsInSync(c.Node) && len(v.InSync) == 1 {
		return fmt.Errorf("remove copy %s of volume %s: %w: it is the last in-sync copy", c.Node, c.Volume, ErrConflict)
	}
	v.Placement = without(v.Placement, c.Node)
	v.InSync = without(v.InSync, c.Node)
	v.CopyIDs = withoutKey(v.CopyIDs, c.Node)
	s.Volumes[c.Volume] = v
	return nil
}

func (c SetPrimary) apply(s *State) error {
	v, err := s.volume("set primary", c.Volume)
	if err != nil {
		return err
	}
	if c.Epoch != v.Epoch {
		return fmt.Errorf("set primary of volume %s to %s: %w: epoch %d, the volume is at %d", c.Volume, c.Node, ErrStaleEpoch, c.Epoch, v.Epoch)
	}
	if c.Node == v.Primary {
		return nil
	}
	if !v.IsInSync(c.Node) {
		return fmt.Errorf("set primary of volume %s to %s: %w: its copy is not in sync (in sync: %v)", c.Volume, c.Node, ErrConflict, v.InSync)
	}
	v.Placement = append([]string{c.Node}, without(v.Placement, c.Node)...)
	inSync := v.InSync
	if c.Failover {
		// The old primary may have had writes in flight that reached some
		// replicas and not others: only the new primary's copy is known
		// to hold exactly the acknowledged writes. The others are rebuilt
		// from it.
		inSync = []string{c.Node}
	}
	v.InSync = ordered(v.Placement, inSync)
	v.Primary = c.Node
	v.Epoch++
	s.Volumes[c.Volume] = v
	return nil
}

func (c SetReservations) apply(s *State) error {
	v, err := s.volume("set reservations", c.Volume)
	if err != nil {
		return err
	}
	if c.Epoch != v.Epoch {
		return fmt.Errorf("set reservations of volume %s: %w: epoch %d, the volume is at %d", c.Volume, ErrStaleEpoch, c.Epoch, v.Epoch)
	}
	if len(c.Data) > maxReservations {
		return fmt.Errorf("set reservations of volume %s: %w: %d bytes, at most %d", c.Volume, ErrInvalid, len(c.Data), maxReservations)
	}
	v.Reservations = slices.Clone(c.Data)
	s.Volumes[c.Volume] = v
	return nil
}

func (c CommitSnapshot) apply(s *State) error {
	v, err := s.volume("commit snapshot", c.Volume)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(v.Snapshots, func(sn Snapshot) bool { return sn.Name == c.Name })
	if i < 0 {
		return fmt.Errorf("commit snapshot %s of volume %s: %w", c.Name, c.Volume, ErrNotFound)
	}
	if !v.Snapshots[i].Pending {
		return nil
	}
	v.Snapshots = slices.Clone(v.Snapshots)
	v.Snapshots[i].Pending = false
	s.Volumes[c.Volume] = v
	return nil
}

func (c LeaveInSync) apply(s *State) error {
	v, err := s.volume("leave in sync", c.Volume)
	if err != nil {
		return err
	}
	if c.Node == "" {
		return fmt.Errorf("leave in sync of volume %s: %w: empty node name", c.Volume, ErrInvalid)
	}
	if c.Epoch < v.Epoch {
		return fmt.Errorf("%s leave in sync of volume %s: %w: epoch %d, the volume is at %d", c.Node, c.Volume, ErrStaleEpoch, c.Epoch, v.Epoch)
	}
	if c.Node == v.Primary {
		return fmt.Errorf("%s leave in sync of volume %s: %w: it is the primary", c.Node, c.Volume, ErrConflict)
	}
	if !v.IsInSync(c.Node) {
		return nil
	}
	v.InSync = without(v.InSync, c.Node)
	s.Volumes[c.Volume] = v
	return nil
}

func (c SetCopyID) apply(s *State) error {
	v, err := s.volume("set copy ID", c.Volume)
	if err != nil {
		return err
	}
	if c.CopyID == "" {
		return fmt.Errorf("set copy ID of %s for volume %s: %w: empty copy ID", c.Node, c.Volume, ErrInvalid)
	}
	if !v.Holds(c.Node) {
		return fmt.Errorf("set copy ID of %s for volume %s: %w: no copy is placed there", c.Node, c.Volume, ErrNotFound)
	}
	known := v.CopyIDs[c.Node]
	if known == c.CopyID {
		return nil
	}
	if known != "" && c.Node == v.Primary {
		// The primary's copy was made again (a replaced disk): it must
		// not serve. Another in-sync copy takes over at the next epoch;
		// without one, the volume waits (the new copy is not the data).
		next := ""
		for _, n := range v.InSync {
			if n != c.Node {
				next = n
				break
			}
		}
		if next == "" {
			return fmt.Errorf("set copy ID of %s for volume %s: %w: the primary's copy on %s was replaced (copy %s, the catalog knows %s), and no other copy is in sync to take over",
				c.Node, c.Volume, ErrConflict, c.Node, c.CopyID, known)
		}
		v.Primary = next
		v.Epoch++
		v.Placement = append([]string{next}, without(v.Placement, next)...)
	}
	if known != "" {
		v.InSync = without(v.InSync, c.Node) // a new copy: rebuilt before it is in sync
	}
	v.CopyIDs = maps.Clone(v.CopyIDs)
	if v.CopyIDs == nil {
		v.CopyIDs = map[string]string{}
	}
	v.CopyIDs[c.Node] = c.CopyID
	s.Volumes[c.Volume] = v
	return nil
}

func (c SetPending) apply(s *State) error {
	v, err := s.volume("set pending", c.Volume)
	if err != nil {
		return err
	}
	if c.Epoch != v.Epoch {
		return fmt.Errorf("set pending %q of volume %s: %w: epoch %d, the volume is at %d", c.Op, c.Volume, ErrStaleEpoch, c.Epoch, v.Epoch)
	}
	if c.By != v.Primary {
		return fmt.Errorf("set pending %q of volume %s: %w: asked by %s, the primary is %s", c.Op, c.Volume, ErrNotPrimary, c.By, v.Primary)
	}
	if len(c.Op) > maxPendingOp {
		return fmt.Errorf("set pending of volume %s: %w: operation of %d bytes, at most %d", c.Volume, ErrInvalid, len(c.Op), maxPendingOp)
	}
	if c.Op != "" && v.Pending != "" && c.Op != v.Pending {
		return fmt.Errorf("set pending %q of volume %s: %w: %q is pending", c.Op, c.Volume, ErrConflict, v.Pending)
	}
	v.Pending = c.Op
	s.Volumes[c.Volume] = v
	return nil
}

// withoutKey returns a copy of m without key, nil if nothing is left.
func withoutKey(m map[string]string, key string) map[string]string {
	if _, ok := m[key]; !ok {
		return m
	}
	out := maps.Clone(m)
	delete(out, key)
	if len(out) == 0 {
		return nil
	}
	return out
}
