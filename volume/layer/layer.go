// Package layer is the layered block store under a volume: a writable head
// on top of read-only snapshot layers, each a sparse file, and for each
// layer an in-memory index of the 4 KiB blocks it holds.
//
// The index is the file's own allocation (SEEK_DATA/SEEK_HOLE), read once
// when a layer is opened and kept up to date as the head is written. So
// there is no separate index to keep crash-consistent: after a crash the
// file system's allocation is the truth, and a block is only ever allocated
// in a layer by a write of the whole 4 KiB block (a partial write into a
// block a lower layer holds first copies that block up), so an allocated
// block never shows anything but whole, written data.
//
// A read takes each block from the highest layer that holds it, zeros if
// none does. Snapshot, revert and clone are O(1) for this package: they
// only stack a new empty head on an existing layer (the catalog records
// the tree; see volume).
package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"tandem.io/tandem/volume/block"
)

// BlockSize is the unit layers hold data in.
const BlockSize = block.PhysicalBlockSize

// Layer is one sparse file and the index of the blocks it holds. A layer
// with a parent continues it: blocks it does not hold are read from below.
type Layer struct {
	ID     string
	Parent *Layer
	f      *os.File
	size   int64

	mu  sync.RWMutex // protects idx
	idx index
}

// Open opens the layer file at path (size bytes) on top of parent (nil for
// a base layer) and indexes the blocks it holds.
func Open(id, path string, size int64, parent *Layer, writable bool) (*Layer, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", id, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("layer %s: %w", id, err)
	}
	if st.Size() != size {
		f.Close()
		return nil, fmt.Errorf("%w: layer %s: file %s is %d bytes, want %d", ErrCorrupt, id, path, st.Size(), size)
	}
	l := &Layer{ID: id, Parent: parent, f: f, size: size}
	if err := l.scan(); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// Create makes an empty (all holes) layer file of size bytes at path and
// syncs it and its directory.
func Create(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("layer: create %s: %w", path, err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("layer: create %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ErrCorrupt: a layer file does not match what the catalog says.
var ErrCorrupt = errors.New("layer file does not match the catalog")

// scan builds the index from the file's allocated extents.
func (l *Layer) scan() error {
	fd := int(l.f.Fd())
	for off := int64(0); off < l.size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer %s: seek data at %d: %w", l.ID, off, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("layer %s: seek hole at %d: %w", l.ID, data, err)
		}
		for b := data / BlockSize; b*BlockSize < hole; b++ {
			l.idx.set(uint64(b))
		}
		off = hole
	}
	return nil
}

func (l *Layer) has(b uint64) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.idx.get(b)
}

// Blocks is the number of blocks the layer itself holds.
func (l *Layer) Blocks() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return int64(l.idx.count())
}

// Close closes the file.
func (l *Layer) Close() error { return l.f.Close() }

// holder returns the highest layer from l down that holds block b.
func (l *Layer) holder(b uint64) *Layer {
	for x := l; x != nil; x = x.Parent {
		if x.has(b) {
			return x
		}
	}
	return nil
}

// Chain is a writable head and the read-only layers under it: one volume's
// data. It implements block.Device, block.Unmapper and block.Mapper.
type Chain struct {
	head *Layer
	size int64
	// stripes serialize copy-ups of a block: two partial writes into the
	// same 4 KiB block (different sectors, so allowed at once) must not
	// both copy the block up and overwrite each other.
	stripes [64]sync.Mutex
}

// NewChain serves head (and its parents) as a device of size bytes.
func NewChain(head *Layer, size int64) *Chain { return &Chain{head: head, size: size} }

// Head is the writable layer.
func (c *Chain) Head() *Layer { return c.head }

// Size is the device size.
func (c *Chain) Size() int64 { return c.size }

func (c *Chain) check(off, n int64) error {
	if off < 0 || n < 0 || off > c.size || n > c.size-off {
		return fmt.Errorf("layer %s: %w: offset %d length %d, size %d", c.head.ID, block.ErrOutOfRange, off, n, c.size)
	}
	return nil
}

func ioErr(l *Layer, op string, off int64, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("layer %s: %s at %d: %w: %v", l.ID, op, off, block.ErrNoSpace, err)
	}
	return fmt.Errorf("layer %s: %s at %d: %w: %v", l.ID, op, off, block.ErrMedium, err)
}

// runs calls fn for consecutive runs of [off, end) whose blocks all come
// from the same layer (nil: no layer holds them). Each block's holder is
// looked up once.
func (c *Chain) runs(off, end int64, fn func(pos, n int64, src *Layer) error) error {
	pos := off
	src := c.head.holder(uint64(pos / BlockSize))
	for pos < end {
		next := (pos/BlockSize + 1) * BlockSize
		var nextSrc *Layer
		for next < end {
			nextSrc = c.head.holder(uint64(next / BlockSize))
			if nextSrc != src {
				break
			}
			next += BlockSize
		}
		next = min(next, end)
		if err := fn(pos, next-pos, src); err != nil {
			return err
		}
		pos, src = next, nextSrc
	}
	return nil
}

// ReadAt fills p from off, each block from the highest layer holding it.
func (c *Chain) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	return c.runs(off, off+int64(len(p)), func(pos, n int64, src *Layer) error {
		q := p[pos-off : pos-off+n]
		if src == nil {
			clear(q)
		} else if _, err := src.f.ReadAt(q, pos); err != nil {
			return ioErr(src, "read", pos, err)
		}
		return nil
	})
}

// WriteAt writes p at off into the head. A partial block whose older data
// is in a lower layer is first completed from it, so the head only ever
// holds whole blocks.
func (c *Chain) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	end := off + int64(len(p))
	for pos := off; pos < end; {
		b := uint64(pos / BlockSize)
		bStart := int64(b) * BlockSize
		// A run of whole blocks goes in pwrites of at most 16 KiB: Linux
		// file systems with large folios (ext4 since 6.16) cache a large
		// write in one large folio, and every later small write into it
		// then pays for the whole folio; measured on ext4 and Linux 6.18,
		// random 4 KiB writes into 1 MiB folios ran at a third of the rate
		// they reach into 16 KiB ones.
		if pos == bStart && end-pos >= BlockSize {
			n := min((end-pos)/BlockSize*BlockSize, 16<<10)
			if err := c.writeWhole(p[pos-off:pos-off+n], pos); err != nil {
				return err
			}
			pos += n
			continue
		}
		n := min(end, bStart+BlockSize) - pos
		if err := c.writePartial(p[pos-off:pos-off+n], pos); err != nil {
			return err
		}
		pos += n
	}
	if fua {
		return c.Flush(ctx)
	}
	return nil
}

func (c *Chain) writeWhole(p []byte, off int64) error {
	if _, err := c.head.f.WriteAt(p, off); err != nil {
		return ioErr(c.head, "write", off, err)
	}
	c.head.mu.Lock()
	for b := off / BlockSize; b < (off+int64(len(p)))/BlockSize; b++ {
		c.head.idx.set(uint64(b))
	}
	c.head.mu.Unlock()
	return nil
}

// writePartial writes less than a block, inside one block.
func (c *Chain) writePartial(p []byte, off int64) error {
	b := uint64(off / BlockSize)
	mu := &c.stripes[b%uint64(len(c.stripes))]
	mu.Lock()
	defer mu.Unlock()
	var src *Layer // the lower layer the block's older data is in
	if !c.head.has(b) && c.head.Parent != nil {
		src = c.head.Parent.holder(b)
	}
	if src == nil {
		// The head holds the block, or nothing below does (the rest of
		// the block reads as zeros either way): write in place.
		if _, err := c.head.f.WriteAt(p, off); err != nil {
			return ioErr(c.head, "write", off, err)
		}
		c.head.mu.Lock()
		c.head.idx.set(b)
		c.head.mu.Unlock()
		return nil
	}
	// Copy up: the block from below, with p merged in, written whole.
	buf := make([]byte, BlockSize)
	bStart := int64(b) * BlockSize
	if _, err := src.f.ReadAt(buf, bStart); err != nil {
		return ioErr(src, "read", bStart, err)
	}
	copy(buf[off-bStart:], p)
	return c.writeWhole(buf, bStart)
}

// Flush makes the head's completed writes durable.
func (c *Chain) Flush(ctx context.Context) error {
	if err := unix.Fdatasync(int(c.head.f.Fd())); err != nil {
		return ioErr(c.head, "fdatasync", 0, err)
	}
	return nil
}

// Unmap makes the range read as zeros and gives space back where it can:
// whole blocks no lower layer holds become holes; a block a snapshot holds
// is overwritten with zeros in the head (the snapshot keeps its copy, and
// the older data must never show through). Partial blocks at the edges are
// zeroed.
func (c *Chain) Unmap(ctx context.Context, off, length int64) error {
	if err := c.check(off, length); err != nil {
		return err
	}
	end := off + length
	zero := make([]byte, BlockSize)
	for pos := off; pos < end; {
		b := uint64(pos / BlockSize)
		bStart := int64(b) * BlockSize
		if pos != bStart || end-pos < BlockSize {
			n := min(end, bStart+BlockSize) - pos
			if err := c.writePartial(zero[:n], pos); err != nil {
				return err
			}
			pos += n
			continue
		}
		below := c.head.Parent != nil && c.head.Parent.holder(b) != nil
		if below {
			if err := c.writeWhole(zero, pos); err != nil {
				return err
			}
			pos += BlockSize
			continue
		}
		// A run of whole blocks nothing below holds: one punched hole.
		n := int64(BlockSize)
		for pos+n+BlockSize <= end && (c.head.Parent == nil || c.head.Parent.holder(uint64((pos+n)/BlockSize)) == nil) {
			n += BlockSize
		}
		if err := c.punch(pos, n); err != nil {
			return err
		}
		pos += n
	}
	return nil
}

func (c *Chain) punch(off, n int64) error {
	err := unix.Fallocate(int(c.head.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		// No holes on this file system: zeros, still correct.
		_, err = c.head.f.WriteAt(make([]byte, n), off)
		if err != nil {
			return ioErr(c.head, "zero", off, err)
		}
		return nil
	}
	if err != nil {
		return ioErr(c.head, "punch hole", off, err)
	}
	c.head.mu.Lock()
	for b := off / BlockSize; b < (off+n)/BlockSize; b++ {
		c.head.idx.clear(uint64(b))
	}
	c.head.mu.Unlock()
	return nil
}

// Mapping reports whether the block at off holds data in any layer of the
// chain, and for how many bytes that stays so.
func (c *Chain) Mapping(ctx context.Context, off int64) (bool, int64, error) {
	if err := c.check(off, 1); err != nil {
		return false, 0, err
	}
	b := uint64(off / BlockSize)
	mapped := c.head.holder(b) != nil
	end := (int64(b) + 1) * BlockSize
	// At most 1 GiB per answer: GET LBA STATUS continues from there.
	limit := min(c.size, end+(1<<30))
	for end < limit && (c.head.holder(uint64(end/BlockSize)) != nil) == mapped {
		end += BlockSize
	}
	return mapped, min(end, c.size) - off, nil
}

var (
	_ block.Device   = (*Chain)(nil)
	_ block.Unmapper = (*Chain)(nil)
	_ block.Mapper   = (*Chain)(nil)
)

// Allocated is the bytes the layer file occupies on disk.
func (l *Layer) Allocated() int64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

// Grow extends the layer file to size bytes (a head, on resize).
func (l *Layer) Grow(size int64) error {
	if size < l.size {
		return fmt.Errorf("layer %s: cannot shrink from %d to %d bytes", l.ID, l.size, size)
	}
	if err := l.f.Truncate(size); err != nil {
		return fmt.Errorf("layer %s: grow to %d: %w", l.ID, size, err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("layer %s: grow to %d: %w", l.ID, size, err)
	}
	l.size = size
	return nil
}

// SetParent re-stacks l on p. The caller keeps every chain through l idle
// while it does.
func (l *Layer) SetParent(p *Layer) { l.Parent = p }

// CopyMissing copies into l every block src holds and l does not (the
// blocks l showed through from src), then syncs l. Each run of up to 256
// blocks is copied inside exclusive, which the caller uses to keep writes
// to l out while a run is checked and copied. After it, l no longer needs
// src: that is how a snapshot is merged into its child before it is
// deleted.
func (l *Layer) CopyMissing(src *Layer, exclusive func(func() error) error) error {
	src.mu.RLock()
	all := src.idx.blocks()
	src.mu.RUnlock()
	buf := make([]byte, BlockSize)
	for len(all) > 0 {
		run := all[:min(256, len(all))]
		all = all[len(run):]
		err := exclusive(func() error {
			for _, b := range run {
				if l.has(b) || int64(b+1)*BlockSize > l.size {
					continue
				}
				off := int64(b) * BlockSize
				if _, err := src.f.ReadAt(buf, off); err != nil {
					return ioErr(src, "read", off, err)
				}
				if _, err := l.f.WriteAt(buf, off); err != nil {
					return ioErr(l, "write", off, err)
				}
				l.mu.Lock()
				l.idx.set(b)
				l.mu.Unlock()
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := unix.Fdatasync(int(l.f.Fd())); err != nil {
		return ioErr(l, "fdatasync", 0, err)
	}
	return nil
}

// Grow extends the device (and its head) to size bytes.
func (c *Chain) Grow(size int64) error {
	if err := c.head.Grow(size); err != nil {
		return err
	}
	c.size = size
	return nil
}

// SendTo writes the n bytes at off to dst, a stream socket, each run of
// blocks with sendfile(2) from the layer holding it (zeros where none
// does). An error after some bytes were sent leaves dst mid-stream: the
// caller drops the connection.
func (c *Chain) SendTo(ctx context.Context, dst syscall.Conn, off, n int64) error {
	if err := c.check(off, n); err != nil {
		return err
	}
	out, err := dst.SyscallConn()
	if err != nil {
		return fmt.Errorf("layer %s: send: %w", c.head.ID, err)
	}
	return c.runs(off, off+n, func(pos, n int64, src *Layer) error {
		if src == nil {
			return sendZeros(out, n)
		}
		return src.sendFile(out, pos, n)
	})
}

var zeroBlock [64 << 10]byte

// writeAll calls step on the socket's descriptor until it has moved n
// bytes, waiting for the socket to be writable whenever step would block.
func writeAll(out syscall.RawConn, n int64, step func(fd int, n int64) (int, error)) error {
	var stepErr error
	err := out.Write(func(fd uintptr) bool {
		for n > 0 {
			k, err := step(int(fd), n)
			switch {
			case errors.Is(err, syscall.EAGAIN):
				return false
			case errors.Is(err, syscall.EINTR):
				continue
			case err != nil:
				stepErr = err
				return true
			case k == 0:
				stepErr = io.ErrUnexpectedEOF
				return true
			}
			n -= int64(k)
		}
		return true
	})
	if stepErr != nil {
		return stepErr
	}
	return err
}

func sendZeros(out syscall.RawConn, n int64) error {
	err := writeAll(out, n, func(fd int, n int64) (int, error) {
		return unix.Write(fd, zeroBlock[:min(n, int64(len(zeroBlock)))])
	})
	if err != nil {
		return fmt.Errorf("layer: send zeros: %w", err)
	}
	return nil
}

// sendFile sends n bytes of the layer file at off with sendfile(2).
func (l *Layer) sendFile(out syscall.RawConn, off, n int64) error {
	in, err := l.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("layer %s: send: %w", l.ID, err)
	}
	pos := off
	var sendErr error
	ctlErr := in.Control(func(infd uintptr) {
		sendErr = writeAll(out, n, func(fd int, n int64) (int, error) {
			return unix.Sendfile(fd, int(infd), &pos, int(min(n, 1<<30)))
		})
	})
	if sendErr != nil {
		return fmt.Errorf("layer %s: sendfile at %d: %w", l.ID, pos, sendErr)
	}
	return ctlErr
}
