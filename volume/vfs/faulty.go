package vfs

import (
	"os"
	"strings"
	"sync"
	"time"
)

// Op names a file-system operation for fault injection.
type Op uint8

// Operations faults can be injected into.
const (
	OpRead Op = iota
	OpWrite
	OpSync
	OpPunch
	OpTruncate
	OpCreate
	OpOpen
	OpRemove
	OpSyncDir
	OpCommit // a catalog commit, refused before anything is written
	// OpCommitted fails a catalog commit after it was written: its outcome
	// is unknown (bbolt's last fdatasync failed).
	OpCommitted
)

var opNames = [...]string{"read", "write", "fdatasync", "punch hole", "truncate", "create", "open", "remove", "syncdir", "catalog commit", "catalog commit written"}

func (o Op) String() string { return opNames[o] }

// Fault is an injected failure or delay: operations of kind Op on files
// whose path contains Path ("" for any) fail with Err (a syscall.Errno such
// as EIO or ENOSPC, wrapped as the os package would) and/or wait Delay
// first. The first Skip matching operations pass; then Times of them are
// hit (0: every one from then on).
type Fault struct {
	Op    Op
	Path  string
	Err   error
	Delay time.Duration
	Skip  int
	Times int
}

// Faulty wraps a file system and injects faults into it.
type Faulty struct {
	FS
	mu     sync.Mutex // protects faults, hits
	faults []*fault
	hits   int
}

type fault struct {
	Fault
	seen, hit int
}

var (
	_ FS        = (*Faulty)(nil)
	_ Committer = (*Faulty)(nil)
)

// NewFaulty wraps fs.
func NewFaulty(fs FS) *Faulty { return &Faulty{FS: fs} }

// Inject adds a fault; the returned function removes it.
func (f *Faulty) Inject(ft Fault) (remove func()) {
	x := &fault{Fault: ft}
	f.mu.Lock()
	f.faults = append(f.faults, x)
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for i, y := range f.faults {
			if y == x {
				f.faults = append(f.faults[:i], f.faults[i+1:]...)
				return
			}
		}
	}
}

// Hits reports how many operations the faults injected so far (removed
// ones included) have hit.
func (f *Faulty) Hits() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

// at applies the faults for one operation: it sleeps for their delay and
// returns their error, if any.
func (f *Faulty) at(op Op, name string) error {
	f.mu.Lock()
	var delay time.Duration
	var err error
	for _, x := range f.faults {
		if x.Op != op || !strings.Contains(name, x.Path) {
			continue
		}
		x.seen++
		if x.seen <= x.Skip || x.Times > 0 && x.hit >= x.Times {
			continue
		}
		x.hit++
		f.hits++
		delay = max(delay, x.Delay)
		if err == nil && x.Err != nil {
			err = &os.PathError{Op: op.String(), Path: name, Err: x.Err}
		}
	}
	f.mu.Unlock()
	if delay > 0 {
		time.Sleep(delay)
	}
	return err
}

// Create implements FS.
func (f *Faulty) Create(name string) (File, error) {
	if err := f.at(OpCreate, name); err != nil {
		return nil, err
	}
	file, err := f.FS.Create(name)
	if err != nil {
		return nil, err
	}
	return &faultyFile{File: file, fs: f, name: name}, nil
}

// Open implements FS.
func (f *Faulty) Open(name string, writable bool) (File, error) {
	if err := f.at(OpOpen, name); err != nil {
		return nil, err
	}
	file, err := f.FS.Open(name, writable)
	if err != nil {
		return nil, err
	}
	return &faultyFile{File: file, fs: f, name: name}, nil
}

// Remove implements FS.
func (f *Faulty) Remove(name string) error {
	if err := f.at(OpRemove, name); err != nil {
		return err
	}
	return f.FS.Remove(name)
}

// SyncDir implements FS.
func (f *Faulty) SyncDir(dir string) error {
	if err := f.at(OpSyncDir, dir); err != nil {
		return err
	}
	return f.FS.SyncDir(dir)
}

// BeforeCommit implements Committer.
func (f *Faulty) BeforeCommit() error {
	if err := f.at(OpCommit, "catalog"); err != nil {
		return err
	}
	return BeforeCommit(f.FS)
}

// AfterCommit implements Committer.
func (f *Faulty) AfterCommit() error {
	if err := AfterCommit(f.FS); err != nil {
		return err
	}
	return f.at(OpCommitted, "catalog")
}

type faultyFile struct {
	File
	fs   *Faulty
	name string
}

func (f *faultyFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.fs.at(OpRead, f.name); err != nil {
		return 0, err
	}
	return f.File.ReadAt(p, off)
}

func (f *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.at(OpWrite, f.name); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *faultyFile) Sync() error {
	if err := f.fs.at(OpSync, f.name); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f *faultyFile) Punch(off, n int64) error {
	if err := f.fs.at(OpPunch, f.name); err != nil {
		return err
	}
	return f.File.Punch(off, n)
}

func (f *faultyFile) Truncate(size int64) error {
	if err := f.fs.at(OpTruncate, f.name); err != nil {
		return err
	}
	return f.File.Truncate(size)
}
