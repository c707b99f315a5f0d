// Package cluster is the cluster catalog: everything that must be the same
// on every node (nodes, volumes, placement, epochs, in-sync sets, snapshots,
// reservations), replicated with hashicorp/raft and stored with
// raft-boltdb.
//
// Why raft: the decisions that keep data safe (who is the primary, which
// copies may acknowledge a write, which replica was dropped) must be taken
// once, in one order, by a majority, so that a node cut off from the others
// cannot take them alone. A command (command.go) is proposed with Propose,
// committed by a majority, then applied by every node's state machine
// (fsm.go) in log order; applying checks the command against the state
// (epochs, requesters, names), so a stale or deposed requester is refused
// the same way everywhere.
//
// Any node may propose: a follower forwards the command to the leader over
// the RPC (rpc.go) served by ServeRPC and waits until it has applied the
// result itself, so a caller always reads its own write. Without a
// majority nothing commits: Propose fails with ErrNoLeader (or
// ErrOutcomeUnknown when the leader was deposed mid-commit).
//
// Membership: the leader admits nodes (Admit): the first five as raft
// voters (a witness is always a voter), later ones as non-voters that only
// replicate the catalog. Remove takes a node out. A node whose link address
// changed is admitted again with its new address; a cluster of one voter
// recovers its own new address at Open.
//
// Caveat: commands and snapshots are versioned JSON and a node refuses
// versions it does not know; mixing node versions that encode differently
// is not supported.
//
// How a node uses it: Open at start (Bootstrap when the node was started
// without --join); serve ServeRPC on the link's rpc listener; read State
// and wait on Changes (catalog changes and leadership changes) to follow
// the catalog. The leader's controller calls Admit for nodes gossip
// reports and Remove for nodes the operator removes; admin commands,
// primaries (DropReplica, MarkInSync, SetReservations, AddSnapshot...) and
// the controller (SetPrimary, AddCopy, RemoveCopy) call Propose from any
// node. An error wrapping ErrStaleEpoch or ErrNotPrimary tells a primary
// it was deposed.
package cluster
