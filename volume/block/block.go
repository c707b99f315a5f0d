// Package block defines the boundary between the SCSI target and whatever keeps
// a volume's bytes: a local sparse file today, a replicated or erasure-coded
// composition later. The target parses CDBs; devices only ever see byte ranges
// (as LIO's backends only see read, write, flush and unmap), so no SCSI detail
// leaks into storage and no storage detail leaks into the target.
//
// This package imports only the standard library so that every layer may
// depend on it.
package block

import (
	"context"
	"errors"
	"syscall"
)

// LogicalBlockSize is the sector size initiators see (512e).
const LogicalBlockSize = 512

// PhysicalBlockSize is the granularity devices allocate and unmap in.
const PhysicalBlockSize = 4096

// Device is a fixed-size array of bytes.
//
// Offsets and lengths passed by the target are always multiples of
// LogicalBlockSize and within [0, Size()). All methods may be called
// concurrently from many goroutines, with one guarantee the target gives
// (target/scsi orders them, a logical unit per device): no two WriteAt or
// Unmap calls whose ranges touch the same PhysicalBlockSize block are in
// flight at once — the later one is issued only after the earlier one
// returned, in the order the target granted them. So a device may
// read-modify-write a physical block without a lock of its own, and a mirror
// applies overlapping writes in the same order on every copy. Calls touching
// different physical blocks run concurrently, and nothing orders ReadAt
// against writes: a read overlapping a write in flight may see old data, new
// data or a mix. Implementations must not retain p after returning. ctx is
// cancelled when the initiator aborts the task or the connection is lost; a
// device may ignore it once an operation is under way.
type Device interface {
	// Size is the device's capacity in bytes. It can grow while the device
	// is in use (resize); it never shrinks.
	Size() int64
	// ReadAt fills p from offset off. Unwritten ranges read as zeros.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt stores p at off. With fua the data is durable when WriteAt
	// returns; without it, only after a later Flush.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Flush makes every completed write durable.
	Flush(ctx context.Context) error
}

// Unmapper is implemented by thin devices that can give space back. After
// Unmap the range reads as zeros.
type Unmapper interface {
	Unmap(ctx context.Context, off, length int64) error
}

// Mapper is implemented by thin devices that know which ranges hold data,
// for GET LBA STATUS.
type Mapper interface {
	// Mapping reports whether the range starting at off is mapped (holds
	// allocated data) and how many bytes from off share that state (at
	// least one PhysicalBlockSize, never past Size()).
	Mapping(ctx context.Context, off int64) (mapped bool, length int64, err error)
}

// Sender is implemented by devices whose bytes live in local files. A
// transport uses it for large reads without data digests: the bytes go from
// the page cache to the socket (sendfile) and are never copied through a
// buffer, which is half of the CPU a large read costs the node.
type Sender interface {
	// SendTo writes the n bytes at off to dst, a stream socket, and
	// returns how many it wrote. An error wrapping ErrMedium or ErrNoSpace
	// says the device could not read the data: exactly the returned count
	// was written and dst is intact, so the transport can complete its
	// framing and report the error. Any other error leaves dst in an
	// unknown state: the transport must drop the connection.
	SendTo(ctx context.Context, dst syscall.Conn, off, n int64) (int64, error)
}

// Sentinel errors devices return, wrapped with detail. The target maps each to
// its sense data.
var (
	// ErrOutOfRange: the range is not inside the device.
	ErrOutOfRange = errors.New("range outside the device")
	// ErrMedium: the data could not be read or written (an I/O error).
	ErrMedium = errors.New("medium error")
	// ErrNoSpace: a thin device could not allocate.
	ErrNoSpace = errors.New("no space left to allocate")
	// ErrClosed: the device was closed (volume deleted or node stopping).
	ErrClosed = errors.New("device closed")
)
