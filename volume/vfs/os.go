package vfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// OS is the operating system's file system.
type OS struct{}

var _ FS = OS{}

// osFile is an *os.File with the extent and sync calls the store needs. It
// also implements syscall.Conn (through *os.File), which the layers use to
// send data with sendfile(2).
type osFile struct {
	*os.File
	fd int
}

func newOSFile(f *os.File) *osFile { return &osFile{File: f, fd: int(f.Fd())} }

// Create implements FS.
func (OS) Create(name string) (File, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	return newOSFile(f), nil
}

// Open implements FS.
func (OS) Open(name string, writable bool) (File, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(name, flag, 0)
	if err != nil {
		return nil, err
	}
	return newOSFile(f), nil
}

// Remove implements FS.
func (OS) Remove(name string) error { return os.Remove(name) }

// RemoveAll implements FS.
func (OS) RemoveAll(name string) error { return os.RemoveAll(name) }

// MkdirAll implements FS.
func (OS) MkdirAll(dir string) error { return os.MkdirAll(dir, 0o700) }

// ReadDir implements FS.
func (OS) ReadDir(dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, len(des))
	for i, de := range des {
		out[i] = Entry{Name: de.Name(), IsDir: de.IsDir()}
	}
	return out, nil
}

// SyncDir implements FS.
func (OS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// File systems known to allocate data before the metadata that points at
// it and to report holes exactly (statfs f_type).
var supportedFS = map[int64]string{
	0xef53:     "ext4",
	0x58465342: "xfs",
	0x9123683e: "btrfs",
	0x01021994: "tmpfs",
}

// CheckAllocation implements FS. A probe file must show a 4 KiB write as
// exactly one 4 KiB allocated range and a punched block as a hole (else
// layers would be wrong even without a crash). Then the file system must
// keep data before allocation across a power loss: ext4 with a journal in
// data=ordered or data=journal mode (the effective mode is read from
// /proc/fs/ext4), xfs or btrfs; anything else is ErrCrashUnsafe, which a
// lab may choose to accept. tmpfs keeps nothing across a restart of the
// machine and is ErrCrashUnsafe too.
func (OS) CheckAllocation(dir string) error {
	if err := probe(OS{}, dir); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	name, ok := supportedFS[int64(st.Type)]
	switch {
	case !ok:
		return fmt.Errorf("%w: the file system of %s (type %#x) is not one known to keep data before allocation: use ext4 (with its journal, data=ordered), xfs or btrfs", ErrCrashUnsafe, dir, st.Type)
	case name == "tmpfs":
		return fmt.Errorf("%w: %s is on tmpfs, which keeps nothing across a restart of the machine", ErrCrashUnsafe, dir)
	case name == "ext4":
		return checkExt4(dir)
	}
	return nil
}

// checkExt4 reads the effective options of the ext4 file system holding
// dir (/proc/fs/ext4/<device>/options lists them all, with a data= mode
// only when there is a journal) and refuses data=writeback, no journal,
// and write barriers turned off.
func checkExt4(dir string) error {
	opts, err := ext4Options(dir)
	if err != nil {
		return fmt.Errorf("%w: the ext4 options of %s cannot be read (%v), so its data ordering is unknown", ErrCrashUnsafe, dir, err)
	}
	has := func(o string) bool { return slices.Contains(opts, o) }
	switch {
	case has("data=writeback"):
		return fmt.Errorf("%w: %s is on ext4 in data=writeback mode, where a block can be allocated before its data reaches the disk: after a power loss a layer would show garbage; mount it with data=ordered (the default, and clear a journal_data_writeback default with tune2fs -o ^journal_data_writeback)", ErrCrashUnsafe, dir)
	case !has("data=ordered") && !has("data=journal"):
		return fmt.Errorf("%w: %s is on ext4 without a journal, where nothing orders data before allocation: after a power loss a layer could show garbage; add one (tune2fs -O has_journal) and mount with data=ordered (the default)", ErrCrashUnsafe, dir)
	case has("nobarrier") || has("barrier=0"):
		return fmt.Errorf("%w: %s is on ext4 mounted with write barriers off (nobarrier), so the disk may reorder writes past a flush; mount it without nobarrier", ErrCrashUnsafe, dir)
	}
	return nil
}

// ext4Options returns the options of the ext4 file system holding dir.
func ext4Options(dir string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, err
	}
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join("/proc/fs/ext4", filepath.Base(link), "options"))
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

// probe writes a 4 KiB block into a sparse file in dir and checks that the
// file system reports exactly that block as allocated, and a hole again
// once it is punched.
func probe(fs FS, dir string) error {
	name := filepath.Join(dir, fmt.Sprintf(".tandem-probe-%d", os.Getpid()))
	fs.Remove(name)
	f, err := fs.Create(name)
	if err != nil {
		return fmt.Errorf("allocation probe in %s: %w", dir, err)
	}
	defer fs.Remove(name)
	defer f.Close()
	const size, at = 1 << 20, 68 << 10
	block := make([]byte, 4096)
	for i := range block {
		block[i] = 0xa5
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("allocation probe in %s: %w", dir, err)
	}
	if _, err := f.WriteAt(block, at); err != nil {
		return fmt.Errorf("allocation probe in %s: %w", dir, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("allocation probe in %s: %w", dir, err)
	}
	start, end, err := f.Data(0)
	if err != nil || start != at || end != at+4096 {
		return fmt.Errorf("the file system of %s reports a 4 KiB write at %d as allocated [%d, %d) (err %v): it does not report allocation at 4 KiB, which Tandem's layers need", dir, at, start, end, err)
	}
	if err := f.Punch(at, 4096); err != nil {
		return fmt.Errorf("the file system of %s cannot punch holes (%v): thin volumes need it", dir, err)
	}
	if start, end, err := f.Data(0); !errors.Is(err, ErrNoData) {
		return fmt.Errorf("the file system of %s still reports [%d, %d) allocated after punching it (err %v)", dir, start, end, err)
	}
	return nil
}

// Size implements File.
func (f *osFile) Size() (int64, error) {
	st, err := f.File.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Sync implements File with fdatasync(2).
func (f *osFile) Sync() error {
	if err := unix.Fdatasync(f.fd); err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	return nil
}

// Punch implements File.
func (f *osFile) Punch(off, n int64) error {
	err := unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	switch {
	case errors.Is(err, syscall.EOPNOTSUPP):
		return ErrNotSupported
	case err != nil:
		return &os.PathError{Op: "punch hole", Path: f.Name(), Err: err}
	}
	return nil
}

// Data implements File with SEEK_DATA and SEEK_HOLE.
func (f *osFile) Data(off int64) (int64, int64, error) {
	start, err := unix.Seek(f.fd, off, unix.SEEK_DATA)
	if errors.Is(err, syscall.ENXIO) {
		return 0, 0, ErrNoData
	}
	if err != nil {
		return 0, 0, &os.PathError{Op: "seek data", Path: f.Name(), Err: err}
	}
	end, err := unix.Seek(f.fd, start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, &os.PathError{Op: "seek hole", Path: f.Name(), Err: err}
	}
	return start, end, nil
}

// Allocated implements File.
func (f *osFile) Allocated() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}
