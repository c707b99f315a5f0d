// Package replication keeps a volume's copies on several nodes identical:
// the primary's Mirror writes its local copy and every in-sync replica
// before it acknowledges, and a replica's Server applies what the primary
// sends, refusing anything from a primary that has been deposed.
//
// Why synchronous mirroring with consensus-committed membership: an
// acknowledged write must survive the loss of any copy but one, so every
// copy that may become primary (the in-sync set) must have it; and a
// copy may leave that set only through the catalog (raft), so a primary
// cut off from the majority cannot shrink the set on its own and carry on
// alone — it stops acknowledging instead.
//
// # Wire protocol
//
// One stream per (primary, replica, volume), over a connection another
// package authenticated. Messages are a fixed 56-byte header and a body
// (wire.go); every length is checked against its bound before anything is
// allocated, and the decoder is fuzzed. A stream opens with Hello (volume,
// epoch); then Write, Unmap, Flush, Barrier and Checksums requests, many in
// flight, answered out of order by ID.
//
// # Fencing
//
// Each node persists, per volume, the highest epoch it accepted. A Hello
// with a newer epoch persists it first; one with an older epoch is
// refused (StaleEpoch). Requests are checked and applied under a
// per-volume shared lock; a Hello takes it exclusively, so once it
// returned nothing of an older epoch — nor of an older stream of the same
// epoch — is applied, even a request already read. A primary that gets
// StaleEpoch is deposed: the write fails, and so does every later I/O
// (ErrDeposed).
//
// # Failures
//
// A replica whose stream fails (connection error, no answer within
// ReplicaTimeout or, for a barrier, BarrierTimeout, any error status
// other than StaleEpoch — a replica that
// cannot store a write is no longer a copy) is dropped: the regions of
// every request it did not acknowledge, and of every write it acknowledged
// since its last completed flush (a replica that lost power lost those),
// are persisted in the DirtyLog, then Drop commits it out of the in-sync
// set, and only then do the writes waiting for it complete. If Drop fails,
// they fail, and so does every write until a Drop succeeds. While a
// replica is out, each write persists its regions as dirty before the
// local copy changes (only regions not yet dirty cost a Mark; concurrent
// marks are committed together).
//
// # Resync
//
// A goroutine per replica reconnects an out-of-sync replica (backoff
// 200ms..5s, or at once on Kick), mirrors live writes to it, and copies
// its dirty regions: each region is locked against live writes while it
// is read locally and sent (unallocated ranges as Unmap, so a thin copy
// stays thin), recorded copied once acknowledged, and cleared from the
// DirtyLog after the replica flushed it. Live writes to regions still
// dirty are not sent (the copy will carry them). The region locks exist
// only while a resync or verify runs. With nothing dirty and nothing in
// flight, Rejoin commits the replica back into the in-sync set.
//
// # Activity log
//
// A write in flight when the primary stops without Close (kill -9, power
// loss) may have reached some copies and not others. So before a write
// or unmap is sent to any copy, the local one included, its regions are
// durably in the DirtyLog under the reserved name ActivityLog (marks of
// new regions group-committed; a region already in the log costs none).
// A region leaves the log only once no write to it is in flight and every
// copy that gets live writes has flushed since its last one: a background
// step flushes the copies and retires regions idle for ActiveIdle while
// the log holds more than an eighth of ActiveRegions, and at once, the
// longest idle first, when a write finds it full (that write waits; the
// log never grows past ActiveRegions). NewMirror repairs what a crash
// left in the log before it serves: each region is copied from the local
// copy (the reference: unflushed writes were never promised durable) to
// every connected in-sync replica, which is flushed, and marked dirty for
// every other replica; then the log is cleared. Close, after flushing
// every copy, deletes the log. A Mirror without replicas skips the log.
//
// # Placement changes
//
// AddReplica and RemoveReplica change the replica set of a running Mirror
// (the catalog's placement changed; same primary, same epoch). The set is
// an immutable slice, replaced with the gate held exclusively, so an I/O
// sees one set from start to end. An added replica starts out of sync —
// with every region dirty (a new copy) or with its DirtyLog regions — and
// rejoins through Rejoin like any resynced one. A removed one is first
// marked removed: I/O ignores it from then on, and its stream is closed,
// whose failure completes the writes waiting for it without a Drop. Then
// it leaves the set, its goroutines are waited for, and its dirty map is
// deleted.
//
// # What the caller must provide
//
//   - Drop and Rejoin are linearizable: an error means the change is not
//     committed and will not be later. The Mirror never runs both at once
//     for one replica.
//   - RegionSize stays the same for a volume (the DirtyLog holds region
//     numbers).
//   - A node raises the volume's epoch on its own Server (RaiseEpoch)
//     before its Mirror serves the volume, and stops its Mirror before it
//     serves the copy to another primary: the Mirror writes its local copy
//     without fencing.
//   - A copy whose node was deposed as primary, or that missed a barrier,
//     is not in sync: it may hold writes nobody acknowledged, or lack an
//     operation (snapshot, resize). It comes back as a full rebuild, with
//     its copy recreated at the volume's current history and size.
//   - An in-sync replica whose dirty map is not empty at NewMirror (a
//     drop that began and did not finish, or a Close with requests
//     unanswered) is dropped and resynced.
//   - RemoveReplica only once the catalog no longer counts the replica
//     as a copy: writes complete without it. AddReplica with full false
//     only if the replica's dirty map was kept by every primary since it
//     left the in-sync set; otherwise full.
//   - Replica names never contain '@' (names with one are reserved).
//     The DirtyLog holds the activity log under ActivityLog, next to
//     the replicas' maps; a listing of the maps shows it.
//
// # Crash windows
//
//   - A replica crashes or loses power: its failure marks dirty every
//     region it did not acknowledge, and every one it acknowledged since
//     its last completed flush, before Drop; it is resynced.
//   - The primary crashes during a drop: the regions are persisted before
//     Drop is proposed; an in-sync replica with dirty regions at the next
//     NewMirror is dropped and resynced.
//   - The primary crashes during a resync: copied regions leave the dirty
//     map only after the replica flushed them.
//   - The primary crashes with writes in flight and serves again (same
//     node, same or newer epoch): the activity log's regions are repaired
//     at NewMirror.
//
// # Known gap
//
// The primary crashes with writes in flight and another node takes over:
// the crashed node's activity log is on that node, so the new primary
// repairs nothing, and the surviving copies can differ where those writes
// went (never acknowledged, so no acknowledged data is lost) until the
// regions are written again; Verify reports them. Closing it needs each
// replica to log the regions it received since its last flush, and a new
// primary to repair their union — not built.
package replication
