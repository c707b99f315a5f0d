package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"tandem.io/tandem/volume/block"
)

// Volume is one volume's data on local disk: a sparse file read and written
// with pread/pwrite. It implements block.Device and block.Unmapper.
type Volume struct {
	name string
	size int64

	mu     sync.RWMutex // held shared by every I/O, exclusively by Close
	f      *os.File
	closed bool
}

var (
	_ block.Device   = (*Volume)(nil)
	_ block.Unmapper = (*Volume)(nil)
	_ block.Mapper   = (*Volume)(nil)
)

func openVolumeFile(name, path string, size int64) (*Volume, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("volume %q: open data file: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("volume %q: %w", name, err)
	}
	if st.Size() != size {
		f.Close()
		return nil, fmt.Errorf("%w: volume %q: data file %s is %d bytes, the catalog says %d", ErrCorrupt, name, path, st.Size(), size)
	}
	return &Volume{name: name, size: size, f: f}, nil
}

// Size is the provisioned size in bytes.
func (v *Volume) Size() int64 { return v.size }

func (v *Volume) check(off, n int64) error {
	if off < 0 || n < 0 || off > v.size || n > v.size-off {
		return fmt.Errorf("volume %q: %w: offset %d length %d, size %d", v.name, block.ErrOutOfRange, off, n, v.size)
	}
	return nil
}

// ioError classifies an OS error.
func (v *Volume) ioError(op string, off int64, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("volume %q: %s at %d: %w: %v", v.name, op, off, block.ErrNoSpace, err)
	}
	return fmt.Errorf("volume %q: %s at %d: %w: %v", v.name, op, off, block.ErrMedium, err)
}

func (v *Volume) lock() error {
	v.mu.RLock()
	if v.closed {
		v.mu.RUnlock()
		return fmt.Errorf("volume %q: %w", v.name, block.ErrClosed)
	}
	return nil
}

// ReadAt reads p at off; holes read as zeros.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if err := v.lock(); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	if _, err := v.f.ReadAt(p, off); err != nil {
		return v.ioError("read", off, err)
	}
	return nil
}

// writeChunk bounds each pwrite. Linux file systems with large folios
// (ext4 since 6.16) cache a large write in one large folio, and every later
// small write into it then pays for the whole folio: measured on ext4 and
// Linux 6.18, random 4 KiB writes into 1 MiB folios run at a third of the
// rate they reach into 16 KiB ones.
const writeChunk = 16 << 10

// WriteAt writes p at off; with fua it is on stable storage on return.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if err := v.lock(); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	for done := 0; done < len(p); {
		n := min(len(p)-done, writeChunk)
		if _, err := v.f.WriteAt(p[done:done+n], off+int64(done)); err != nil {
			return v.ioError("write", off+int64(done), err)
		}
		done += n
	}
	if fua {
		if err := unix.Fdatasync(int(v.f.Fd())); err != nil {
			return v.ioError("fdatasync", off, err)
		}
	}
	return nil
}

// Flush makes every completed write durable.
func (v *Volume) Flush(ctx context.Context) error {
	if err := v.lock(); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	if err := unix.Fdatasync(int(v.f.Fd())); err != nil {
		return v.ioError("fdatasync", 0, err)
	}
	return nil
}

// Unmap gives the range's space back: whole 4 KiB blocks become holes, the
// partial blocks at the edges are zeroed. The range then reads as zeros.
func (v *Volume) Unmap(ctx context.Context, off, length int64) error {
	if err := v.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if err := v.lock(); err != nil {
		return err
	}
	defer v.mu.RUnlock()
	end := off + length
	start := (off + block.PhysicalBlockSize - 1) / block.PhysicalBlockSize * block.PhysicalBlockSize
	stop := end / block.PhysicalBlockSize * block.PhysicalBlockSize
	zero := func(a, b int64) error {
		if b <= a {
			return nil
		}
		if _, err := v.f.WriteAt(make([]byte, b-a), a); err != nil {
			return v.ioError("zero", a, err)
		}
		return nil
	}
	if stop <= start {
		return zero(off, end)
	}
	if err := zero(off, start); err != nil {
		return err
	}
	if err := zero(stop, end); err != nil {
		return err
	}
	if err := unix.Fallocate(int(v.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, stop-start); err != nil {
		if errors.Is(err, syscall.EOPNOTSUPP) {
			return zero(start, stop) // a file system without holes: still reads as zeros
		}
		return v.ioError("punch hole", start, err)
	}
	return nil
}

// Mapping reports the allocation state at off from the file's holes
// (SEEK_DATA/SEEK_HOLE), rounded out to whole 4 KiB blocks.
func (v *Volume) Mapping(ctx context.Context, off int64) (bool, int64, error) {
	if err := v.check(off, 1); err != nil {
		return false, 0, err
	}
	if err := v.lock(); err != nil {
		return false, 0, err
	}
	defer v.mu.RUnlock()
	fd := int(v.f.Fd())
	data, err := unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, syscall.ENXIO) {
		return false, v.size - off, nil // only a hole from here to the end
	}
	if err != nil {
		return false, 0, v.ioError("seek data", off, err)
	}
	if data > off {
		// A hole up to data; report whole blocks of it.
		end := data / block.PhysicalBlockSize * block.PhysicalBlockSize
		if end > off {
			return false, min(end, v.size) - off, nil
		}
	}
	hole, err := unix.Seek(fd, max(data, off), unix.SEEK_HOLE)
	if err != nil {
		return false, 0, v.ioError("seek hole", off, err)
	}
	end := (hole + block.PhysicalBlockSize - 1) / block.PhysicalBlockSize * block.PhysicalBlockSize
	return true, min(end, v.size) - off, nil
}

// allocated returns the bytes the file occupies on disk.
func (v *Volume) allocated() int64 {
	if err := v.lock(); err != nil {
		return 0
	}
	defer v.mu.RUnlock()
	var st unix.Stat_t
	if err := unix.Fstat(int(v.f.Fd()), &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// close flushes and closes; later I/O gets block.ErrClosed. In-flight I/O
// finishes first.
func (v *Volume) close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	err := unix.Fdatasync(int(v.f.Fd()))
	if cerr := v.f.Close(); err == nil {
		err = cerr
	}
	return err
}
