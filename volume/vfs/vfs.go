// Package vfs is the file-system seam under the volume store: the layer
// files, their directories and the catalog's commits go through an FS, so
// that tests can run the real store on a file system that loses power
// (Mem: everything not synced is dropped, the rest torn as a disk would) or
// fails (Faulty: EIO, ENOSPC, slow disks), in the spirit of pebble's vfs and
// errorfs. Production uses OS, a thin wrapper over the operating system.
//
// The contract is the one ext4 with data=ordered gives, and the store
// relies on it: a write is durable after File.Sync; a new or removed
// directory entry after SyncDir of its directory; a block allocated by a
// write is never found allocated after a crash without that write's data
// (data reaches the disk before the allocation that points at it). OS
// checks at open (CheckAllocation) that the file system keeps that promise
// and reports allocation exactly, and refuses it otherwise.
package vfs

import (
	"errors"
	"os"
)

// FS is the part of a file system the volume store uses. Names are paths
// as the os package takes them. Safe for concurrent use.
type FS interface {
	// Create makes a new empty file, failing if name exists, open for
	// reading and writing.
	Create(name string) (File, error)
	// Open opens an existing file, read-only unless writable.
	Open(name string, writable bool) (File, error)
	// Remove removes a file or an empty directory.
	Remove(name string) error
	// RemoveAll removes a directory and everything under it.
	RemoveAll(name string) error
	// MkdirAll creates a directory and its parents (mode 0700).
	MkdirAll(dir string) error
	// ReadDir lists a directory's entries.
	ReadDir(dir string) ([]Entry, error)
	// SyncDir makes the directory's entries durable: files created,
	// renamed or removed in it.
	SyncDir(dir string) error
	// CheckAllocation reports why files in dir cannot hold layers, nil if
	// they can: allocation not reported at 4 KiB, or holes that cannot be
	// punched (always fatal); or, wrapping ErrCrashUnsafe, allocation that
	// can reach the disk before the data.
	CheckAllocation(dir string) error
}

// Entry is a directory entry.
type Entry struct {
	Name  string
	IsDir bool
}

// File is an open file. ReadAt, WriteAt and the extent queries may be
// called concurrently.
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Size is the file's length.
	Size() (int64, error)
	// Truncate sets the length; it is durable after Sync.
	Truncate(size int64) error
	// Sync makes the file's written data and its length durable
	// (fdatasync). After a failed Sync the file's state is unknown.
	Sync() error
	// Punch deallocates [off, off+n); the range then reads as zeros.
	// ErrNotSupported if the file system cannot.
	Punch(off, n int64) error
	// Data finds the first allocated range at or after off: [start, end).
	// ErrNoData if there is none.
	Data(off int64) (start, end int64, err error)
	// Allocated is the space the file occupies, in bytes.
	Allocated() (int64, error)
	Close() error
}

// Committer is implemented by file systems that take part in the order of
// catalog commits (Mem, Faulty). The catalog calls BeforeCommit before each
// commit and does not commit if it fails (nothing was written); it calls
// AfterCommit once the commit is written, and if that fails the commit's
// outcome is unknown, as when bbolt's last fdatasync (of its meta page)
// fails: the change may or may not be on disk. A power cut in Mem falls
// between any two of its operations, these included.
type Committer interface {
	BeforeCommit() error
	AfterCommit() error
}

// BeforeCommit calls fs's BeforeCommit if it has one.
func BeforeCommit(fs FS) error {
	if c, ok := fs.(Committer); ok {
		return c.BeforeCommit()
	}
	return nil
}

// AfterCommit calls fs's AfterCommit if it has one.
func AfterCommit(fs FS) error {
	if c, ok := fs.(Committer); ok {
		return c.AfterCommit()
	}
	return nil
}

var (
	// ErrNotSupported: the file system cannot punch holes.
	ErrNotSupported = errors.New("operation not supported by the file system")
	// ErrNoData: no allocated range at or after the offset.
	ErrNoData = errors.New("no data at or after the offset")
	// ErrCrashUnsafe: the file system reports allocation right but may not
	// keep data before allocation across a power loss; a lab or test may
	// accept that, a production node must not.
	ErrCrashUnsafe = errors.New("the file system cannot keep layers safe across a power loss")
)

// IsNotExist reports whether err says a file does not exist.
func IsNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
