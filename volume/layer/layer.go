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
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"tandem.io/tandem/volume/block"
	"tandem.io/tandem/volume/vfs"
)

// BlockSize is the unit layers hold data in.
const BlockSize = block.PhysicalBlockSize

// Layer is one sparse file and the index of the blocks it holds. A layer
// with a parent continues it: blocks it does not hold are read from below.
type Layer struct {
	ID string
	// parent is the layer below (Parent). It changes only while every
	// chain's I/O through the layer is held (SetParent); it is atomic
	// because Chain.Err, which a volume's status reads without waiting for
	// I/O to drain, walks it meanwhile.
	parent atomic.Pointer[Layer]
	fs     vfs.FS
	path   string
	size   int64

	// f is the open file; writable only for a head. Freeze swaps it for a
	// read-only one while no I/O can reach the layer.
	f        vfs.File
	writable bool

	mu  sync.RWMutex // protects idx
	idx index

	// failed is set once a sync of the file failed: what the disk holds is
	// then unknown (the kernel may have dropped the unwritten pages), so
	// every later read, write and flush through the layer fails until the
	// store is reopened. A flush is never reported good after a failed
	// one ("fsyncgate").
	failed atomic.Pointer[error]

	// pinMu protects pins, retired and the swap of f (Freeze) against
	// sends, which read f without their volume's lock (pinFile).
	pinMu   sync.Mutex
	pins    int
	retired []vfs.File // files closed when the last pin goes

	// One fdatasync of the file at a time: on Linux a writeback error is
	// reported to one of two concurrent fdatasyncs only, so the other
	// could call data durable that was dropped. Callers that arrive while
	// one runs wait for the next, and share it (group commit).
	syncMu   sync.Mutex // protects syncing, started, finished
	syncDone sync.Cond  // broadcast when a sync ends; L is syncMu
	syncing  bool
	started  uint64 // syncs started
	finished uint64 // the number of the last sync that ended
}

// Open opens the layer file at path (size bytes) on top of parent (nil for
// a base layer) and indexes the blocks it holds. Only a head is opened
// writable.
func Open(fs vfs.FS, id, path string, size int64, parent *Layer, writable bool) (*Layer, error) {
	f, err := fs.Open(path, writable)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", id, err)
	}
	n, err := f.Size()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("layer %s: %w", id, err)
	}
	if n != size {
		f.Close()
		return nil, fmt.Errorf("%w: layer %s: file %s is %d bytes, want %d", ErrCorrupt, id, path, n, size)
	}
	l := &Layer{ID: id, fs: fs, path: path, f: f, size: size, writable: writable}
	l.parent.Store(parent)
	if err := l.scan(); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// Create makes an empty (all holes) layer file of size bytes at path and
// syncs it and its directory.
func Create(fs vfs.FS, path string, size int64) error {
	f, err := fs.Create(path)
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
		err = fs.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		fs.Remove(path)
		return fmt.Errorf("layer: create %s: %w", path, err)
	}
	return nil
}

// Trim cuts the layer file at path back to size bytes and syncs it: the
// store's roll-back of a resize that grew the file but was never
// committed. Blocks past size were never written (the larger size was
// never served).
func Trim(fs vfs.FS, path string, size int64) error {
	f, err := fs.Open(path, true)
	if err != nil {
		return fmt.Errorf("layer: trim %s: %w", path, err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("layer: trim %s to %d bytes: %w", path, size, err)
	}
	return nil
}

// ErrCorrupt: a layer file does not match what the catalog says.
var ErrCorrupt = errors.New("layer file does not match the catalog")

// scan builds the index from the file's allocated extents.
func (l *Layer) scan() error {
	for off := int64(0); off < l.size; {
		data, hole, err := l.f.Data(off)
		if errors.Is(err, vfs.ErrNoData) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("layer %s: allocation at %d: %w", l.ID, off, err)
		}
		if hole <= data {
			return fmt.Errorf("%w: layer %s: allocated range [%d, %d)", ErrCorrupt, l.ID, data, hole)
		}
		for b := data / BlockSize; b*BlockSize < hole && b*BlockSize < l.size; b++ {
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

// Close closes the file, or, while sends still read it (pinFile), has the
// last of them close it.
func (l *Layer) Close() error { return l.retire(l.f) }

// pinFile returns the layer's file, kept open until unpin: a send reads
// it without holding its volume's lock, so a socket that blocks the send
// does not hold up the volume's snapshots, reverts or other I/O.
func (l *Layer) pinFile() vfs.File {
	l.pinMu.Lock()
	defer l.pinMu.Unlock()
	l.pins++
	return l.f
}

func (l *Layer) unpin() {
	l.pinMu.Lock()
	defer l.pinMu.Unlock()
	if l.pins--; l.pins == 0 {
		for _, f := range l.retired {
			f.Close()
		}
		l.retired = nil
	}
}

// retire closes f, a file of the layer no longer used for new I/O, once
// no send reads it.
func (l *Layer) retire(f vfs.File) error {
	l.pinMu.Lock()
	defer l.pinMu.Unlock()
	if l.pins > 0 {
		l.retired = append(l.retired, f)
		return nil
	}
	return f.Close()
}

// Err says why the layer can no longer be used (a failed sync), nil if it
// can.
func (l *Layer) Err() error {
	if p := l.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// fail records a failed sync (err as ioErr classifies it: a medium error,
// or no space); the first cause is kept.
func (l *Layer) fail(err error) {
	err = fmt.Errorf("%w; what the file holds on disk is unknown, so the layer is no longer used until the volume is reopened", err)
	l.failed.CompareAndSwap(nil, &err)
}

// sync makes everything written to the layer before the call durable: it
// waits for an fdatasync of f that starts after the call (running it, or
// sharing the one another caller runs). A failure fails the layer for
// good, and so every sync, running or later, reports it.
func (l *Layer) sync(f vfs.File) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.syncDone.L == nil {
		l.syncDone.L = &l.syncMu
	}
	need := l.started + 1 // the next sync to start comes after this call
	for l.finished < need {
		if err := l.Err(); err != nil {
			return err
		}
		if l.syncing {
			l.syncDone.Wait()
			continue
		}
		l.syncing = true
		l.started++
		n := l.started
		l.syncMu.Unlock()
		err := f.Sync()
		if err != nil {
			l.fail(ioErr(l, "fdatasync", 0, err))
		}
		l.syncMu.Lock()
		l.syncing, l.finished = false, n
		l.syncDone.Broadcast()
	}
	return l.Err()
}

// Freeze reopens the layer read-only: the head became a snapshot. The
// caller keeps every chain through the layer idle while it does.
func (l *Layer) Freeze() error {
	if !l.writable {
		return nil
	}
	f, err := l.fs.Open(l.path, false)
	if err != nil {
		return fmt.Errorf("layer %s: reopening read-only: %w", l.ID, err)
	}
	old := l.f
	l.pinMu.Lock()
	l.f, l.writable = f, false
	l.pinMu.Unlock()
	l.retire(old)
	return nil
}

// holder returns the highest layer from l down that holds block b.
func (l *Layer) holder(b uint64) *Layer {
	for x := l; x != nil; x = x.Parent() {
		if x.has(b) {
			return x
		}
	}
	return nil
}

// Chain is a writable head and the read-only layers under it: one volume's
// data. It implements block.Device, block.Unmapper and block.Mapper.
//
// Writes to the same 4 KiB block may come at once (the target orders
// overlapping writes, but the chain does not rely on it): the block's
// stripe lock serializes a copy-up (a partial write into a block a lower
// layer holds: read, merge, write whole) with every other write of that
// block, so a copy-up never puts older sectors back over a newer write.
type Chain struct {
	head    *Layer
	size    int64
	stripes [64]sync.Mutex
}

// NewChain serves head (and its parents) as a device of size bytes.
func NewChain(head *Layer, size int64) *Chain { return &Chain{head: head, size: size} }

// Head is the writable layer.
func (c *Chain) Head() *Layer { return c.head }

// Size is the device size.
func (c *Chain) Size() int64 { return c.size }

// Err says why the chain cannot be used (a layer of it failed a sync), nil
// if it can.
func (c *Chain) Err() error {
	for l := c.head; l != nil; l = l.Parent() {
		if err := l.Err(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Chain) check(off, n int64) error {
	if off < 0 || n < 0 || off > c.size || n > c.size-off {
		return fmt.Errorf("layer %s: %w: offset %d length %d, size %d", c.head.ID, block.ErrOutOfRange, off, n, c.size)
	}
	return nil
}

// writable checks that the head can take writes.
func (c *Chain) writable(off, n int64) error {
	if err := c.check(off, n); err != nil {
		return err
	}
	if !c.head.writable {
		return fmt.Errorf("layer %s: %w: the layer is read-only", c.head.ID, block.ErrMedium)
	}
	return c.head.Err()
}

func ioErr(l *Layer, op string, off int64, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("layer %s: %s at %d: %w: %v", l.ID, op, off, block.ErrNoSpace, err)
	}
	return fmt.Errorf("layer %s: %s at %d: %w: %v", l.ID, op, off, block.ErrMedium, err)
}

// aborted is the error for an operation stopped because ctx ended (the
// task was aborted): the rest of its range is left as it was.
func aborted(l *Layer, op string, off int64, ctx context.Context) error {
	return fmt.Errorf("layer %s: %s stopped at %d: %w", l.ID, op, off, ctx.Err())
}

// runs calls fn for consecutive runs of [off, end) whose blocks all come
// from the same layer (nil: no layer holds them). Each block's holder is
// looked up once. A run from a failed layer is an error.
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
		if src != nil {
			if err := src.Err(); err != nil {
				return err
			}
		}
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

// maxPiece is the most a single pwrite carries: Linux file systems with
// large folios (ext4 since 6.16) cache a large write in one large folio,
// and every later small write into it then pays for the whole folio;
// measured on ext4 and Linux 6.18, random 4 KiB writes into 1 MiB folios
// ran at a third of the rate they reach into 16 KiB ones.
const maxPiece = 16 << 10

// WriteAt writes p at off into the head. A partial block whose older data
// is in a lower layer is first completed from it, so the head only ever
// holds whole blocks. An aborted task (ctx done) stops between pieces.
func (c *Chain) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := c.writable(off, int64(len(p))); err != nil {
		return err
	}
	end := off + int64(len(p))
	for pos := off; pos < end; {
		if ctx.Err() != nil {
			return aborted(c.head, "write", pos, ctx)
		}
		b := uint64(pos / BlockSize)
		bStart := int64(b) * BlockSize
		if pos == bStart && end-pos >= BlockSize {
			n := min((end-pos)/BlockSize*BlockSize, maxPiece)
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

// lockBlocks takes the stripe locks of blocks [first, last], in stripe
// order (so two writers never wait for each other in a cycle), and returns
// the function that releases them. A run of at most four blocks.
func (c *Chain) lockBlocks(first, last uint64) func() {
	var idx [4]int
	n := 0
	for b := first; b <= last && n < len(idx); b++ {
		i := int(b % uint64(len(c.stripes)))
		if !slices.Contains(idx[:n], i) {
			idx[n] = i
			n++
		}
	}
	slices.Sort(idx[:n])
	for _, i := range idx[:n] {
		c.stripes[i].Lock()
	}
	return func() {
		for _, i := range idx[:n] {
			c.stripes[i].Unlock()
		}
	}
}

// writeWhole writes whole blocks (at most maxPiece bytes) at off. Where a
// lower layer exists, it holds the blocks' stripes so that no copy-up of
// the same blocks interleaves with it.
func (c *Chain) writeWhole(p []byte, off int64) error {
	if c.head.Parent() != nil {
		defer c.lockBlocks(uint64(off/BlockSize), uint64((off+int64(len(p)))/BlockSize-1))()
	}
	return c.storeWhole(p, off)
}

// storeWhole writes whole blocks into the head and marks them held.
func (c *Chain) storeWhole(p []byte, off int64) error {
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
	if !c.head.has(b) && c.head.Parent() != nil {
		src = c.head.Parent().holder(b)
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
	if err := src.Err(); err != nil {
		return err
	}
	// Copy up: the block from below, with p merged in, written whole.
	var buf [BlockSize]byte
	bStart := int64(b) * BlockSize
	if _, err := src.f.ReadAt(buf[:], bStart); err != nil {
		return ioErr(src, "read", bStart, err)
	}
	copy(buf[off-bStart:], p)
	return c.storeWhole(buf[:], bStart)
}

// Flush makes the head's completed writes durable. Once a flush failed,
// every later one fails too.
func (c *Chain) Flush(ctx context.Context) error {
	return c.head.sync(c.head.f)
}

// Unmap makes the range read as zeros and gives space back where it can:
// whole blocks no lower layer holds become holes; a block a snapshot holds
// is overwritten with zeros in the head (the snapshot keeps its copy, and
// the older data must never show through). Partial blocks at the edges are
// zeroed. An aborted task (ctx done) stops between blocks or runs.
func (c *Chain) Unmap(ctx context.Context, off, length int64) error {
	if err := c.writable(off, length); err != nil {
		return err
	}
	end := off + length
	var zero [BlockSize]byte
	for pos := off; pos < end; {
		if ctx.Err() != nil {
			return aborted(c.head, "unmap", pos, ctx)
		}
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
		below := c.head.Parent() != nil && c.head.Parent().holder(b) != nil
		if below {
			if err := c.writeWhole(zero[:], pos); err != nil {
				return err
			}
			pos += BlockSize
			continue
		}
		// A run of whole blocks nothing below holds: one punched hole
		// (at most 1 GiB at a time, so an abort is seen).
		n := int64(BlockSize)
		for pos+n+BlockSize <= end && n < 1<<30 && (c.head.Parent() == nil || c.head.Parent().holder(uint64((pos+n)/BlockSize)) == nil) {
			n += BlockSize
		}
		if err := c.punch(ctx, pos, n); err != nil {
			return err
		}
		pos += n
	}
	return nil
}

// punch deallocates whole blocks [off, off+n) of the head; on a file
// system that cannot, it writes zeros there, a piece at a time.
func (c *Chain) punch(ctx context.Context, off, n int64) error {
	err := c.head.f.Punch(off, n)
	if errors.Is(err, vfs.ErrNotSupported) {
		// No holes on this file system: zeros, still correct, written
		// from one shared zero buffer whatever the range's size.
		for pos := off; pos < off+n; {
			if ctx.Err() != nil {
				return aborted(c.head, "zero", pos, ctx)
			}
			k := min(off+n-pos, int64(len(zeroBlock)))
			if _, err := c.head.f.WriteAt(zeroBlock[:k], pos); err != nil {
				return ioErr(c.head, "zero", pos, err)
			}
			c.head.mu.Lock()
			for b := pos / BlockSize; b < (pos+k)/BlockSize; b++ {
				c.head.idx.set(uint64(b))
			}
			c.head.mu.Unlock()
			pos += k
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
	f := l.pinFile() // Freeze swaps it; a pinned file stays open
	defer l.unpin()
	n, err := f.Allocated()
	if err != nil {
		return 0
	}
	return n
}

// Size is the layer file's size.
func (l *Layer) Size() int64 { return l.size }

// Grow extends the layer file to size bytes (a head, on resize) and syncs
// it.
func (l *Layer) Grow(size int64) error {
	if size < l.size {
		return fmt.Errorf("layer %s: cannot shrink from %d to %d bytes", l.ID, l.size, size)
	}
	if err := l.Err(); err != nil {
		return err
	}
	if err := l.f.Truncate(size); err != nil {
		return ioErr(l, fmt.Sprintf("grow to %d", size), 0, err)
	}
	if err := l.sync(l.f); err != nil {
		return err
	}
	l.size = size
	return nil
}

// Shrink cuts the head's file back to size bytes after a Grow that was
// not committed, and syncs it.
func (l *Layer) Shrink(size int64) error {
	if err := l.f.Truncate(size); err != nil {
		return ioErr(l, fmt.Sprintf("shrink to %d", size), 0, err)
	}
	if err := l.sync(l.f); err != nil {
		return err
	}
	l.size = size
	return nil
}

// SetParent re-stacks l on p. The caller keeps every chain through l idle
// while it does.
func (l *Layer) SetParent(p *Layer) { l.parent.Store(p) }

// Parent is the layer below, nil for a base layer.
func (l *Layer) Parent() *Layer { return l.parent.Load() }

// CopyMissing copies into l every block src holds and l does not (the
// blocks l showed through from src), then syncs l. Each block is checked
// and copied inside lock(b), which the caller uses to keep writes to that
// block of l out meanwhile (a head's chain: LockBlock). After it, l no
// longer needs src: that is how a snapshot is merged into its child before
// it is deleted. A snapshot layer (read-only) is written through a second,
// writable handle for the merge. Memory does not grow with the layers'
// size: src's index is walked a run at a time.
func (l *Layer) CopyMissing(ctx context.Context, src *Layer, lock func(b uint64) (func(), error)) error {
	if err := errors.Join(l.Err(), src.Err()); err != nil {
		return err
	}
	w := l.f
	if !l.writable {
		f, err := l.fs.Open(l.path, true)
		if err != nil {
			return fmt.Errorf("layer %s: opening for the merge: %w", l.ID, err)
		}
		defer f.Close()
		w = f
	}
	var buf [BlockSize]byte
	var run [256]uint64
	for next := uint64(0); ; {
		if ctx.Err() != nil {
			return fmt.Errorf("layer %s: merge stopped: %w", l.ID, ctx.Err())
		}
		n := 0
		src.mu.RLock()
		for n < len(run) {
			b, ok := src.idx.next(next)
			if !ok {
				break
			}
			run[n], next = b, b+1
			n++
		}
		src.mu.RUnlock()
		if n == 0 {
			break
		}
		for _, b := range run[:n] {
			if err := l.copyBlock(src, w, b, &buf, lock); err != nil {
				return err
			}
		}
	}
	return l.sync(w)
}

// copyBlock copies block b from src into l through w unless l holds it.
func (l *Layer) copyBlock(src *Layer, w vfs.File, b uint64, buf *[BlockSize]byte, lock func(uint64) (func(), error)) error {
	unlock, err := lock(b)
	if err != nil {
		return err
	}
	defer unlock()
	if l.has(b) || int64(b+1)*BlockSize > l.size {
		return nil
	}
	off := int64(b) * BlockSize
	if _, err := src.f.ReadAt(buf[:], off); err != nil {
		return ioErr(src, "read", off, err)
	}
	if _, err := w.WriteAt(buf[:], off); err != nil {
		return ioErr(l, "write", off, err)
	}
	l.mu.Lock()
	l.idx.set(b)
	l.mu.Unlock()
	return nil
}

// LockBlock keeps every write of block b out (see Chain) until the
// returned function is called.
func (c *Chain) LockBlock(b uint64) func() { return c.lockBlocks(b, b) }

// SetSize serves the chain at size bytes: the head's file must already be
// that large (Layer.Grow). The caller keeps the chain idle while it does.
func (c *Chain) SetSize(size int64) { c.size = size }

// SendTo writes the n bytes at off to dst, a stream socket, each run of
// blocks with sendfile(2) from the layer holding it (zeros where none
// does), and returns how many it wrote. A block that cannot be read ends
// it with a medium error after exactly the bytes before it (dst intact);
// any other error leaves dst mid-stream: the caller drops the connection.
func (c *Chain) SendTo(ctx context.Context, dst syscall.Conn, off, n int64) (int64, error) {
	p, err := c.PlanSend(off, n)
	if err != nil {
		return 0, err
	}
	defer p.Release()
	return p.SendTo(ctx, dst)
}

// SendPlan is a read of a chain made ready to send: each run of blocks
// with the file of the layer holding it, pinned (kept open, even by a
// Freeze or Close meanwhile) until Release. Planning needs the chain idle
// of re-stacking (its volume's I/O lock, shared); sending does not.
type SendPlan struct {
	runs []sendRun
}

type sendRun struct {
	l      *Layer   // nil: no layer holds the run (zeros)
	f      vfs.File // l's file, pinned
	off, n int64
}

// PlanSend finds where each block of the n bytes at off comes from.
func (c *Chain) PlanSend(off, n int64) (*SendPlan, error) {
	if err := c.check(off, n); err != nil {
		return nil, err
	}
	p := &SendPlan{}
	err := c.runs(off, off+n, func(pos, k int64, src *Layer) error {
		r := sendRun{l: src, off: pos, n: k}
		if src != nil {
			r.f = src.pinFile()
		}
		p.runs = append(p.runs, r)
		return nil
	})
	if err != nil {
		p.Release()
		return nil, err
	}
	return p, nil
}

// Release unpins the plan's files.
func (p *SendPlan) Release() {
	for _, r := range p.runs {
		if r.l != nil {
			r.l.unpin()
		}
	}
	p.runs = nil
}

// SendTo sends the plan's bytes to dst (see Chain.SendTo).
func (p *SendPlan) SendTo(ctx context.Context, dst syscall.Conn) (int64, error) {
	out, err := dst.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("layer: send: %w", err)
	}
	sent := int64(0)
	for _, r := range p.runs {
		var k int64
		if r.l == nil {
			k, err = sendZeros(out, r.n)
		} else {
			k, err = r.l.sendFile(r.f, out, r.off, r.n)
		}
		sent += k
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

var zeroBlock [64 << 10]byte

// writeAll calls step on the socket's descriptor until it has moved n
// bytes, waiting for the socket to be writable whenever step would block,
// and returns how many bytes it moved.
func writeAll(out syscall.RawConn, n int64, step func(fd int, n int64) (int, error)) (int64, error) {
	var stepErr error
	moved := int64(0)
	err := out.Write(func(fd uintptr) bool {
		for moved < n {
			k, err := step(int(fd), n-moved)
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
			moved += int64(k)
		}
		return true
	})
	if stepErr != nil {
		return moved, stepErr
	}
	return moved, err
}

func sendZeros(out syscall.RawConn, n int64) (int64, error) {
	k, err := writeAll(out, n, func(fd int, n int64) (int, error) {
		return unix.Write(fd, zeroBlock[:min(n, int64(len(zeroBlock)))])
	})
	if err != nil {
		return k, fmt.Errorf("layer: send zeros: %w", err)
	}
	return k, nil
}

// sendFile sends n bytes of the layer file at off with sendfile(2), or
// through a buffer if the file is not one the kernel can send from. When
// sendfile fails, a read of the same bytes tells whose fault it was: if the
// file cannot be read there either, it is a medium error (dst intact after
// the bytes sent); otherwise the socket's.
func (l *Layer) sendFile(f vfs.File, out syscall.RawConn, off, n int64) (int64, error) {
	sc, ok := f.(syscall.Conn)
	if !ok {
		return l.sendCopy(f, out, off, n)
	}
	in, err := sc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("layer %s: send: %w", l.ID, err)
	}
	pos := off
	var sent int64
	var sendErr error
	ctlErr := in.Control(func(infd uintptr) {
		sent, sendErr = writeAll(out, n, func(fd int, n int64) (int, error) {
			return unix.Sendfile(fd, int(infd), &pos, int(min(n, 1<<30)))
		})
	})
	if sendErr != nil {
		var probe [BlockSize]byte
		if _, rerr := f.ReadAt(probe[:min(n-sent, BlockSize)], off+sent); rerr != nil && !errors.Is(rerr, io.EOF) {
			return sent, ioErr(l, "read", off+sent, rerr)
		}
		return sent, fmt.Errorf("layer %s: sendfile at %d: %w", l.ID, pos, sendErr)
	}
	return sent, ctlErr
}

// sendCopy sends n bytes of the layer file at off through a buffer.
func (l *Layer) sendCopy(f vfs.File, out syscall.RawConn, off, n int64) (int64, error) {
	buf := make([]byte, min(n, 256<<10))
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(buf)))
		if _, err := f.ReadAt(buf[:k], off+done); err != nil && !(errors.Is(err, io.EOF) && k == 0) {
			return done, ioErr(l, "read", off+done, err)
		}
		p := buf[:k]
		m, err := writeAll(out, k, func(fd int, _ int64) (int, error) {
			m, err := unix.Write(fd, p)
			if m > 0 {
				p = p[m:]
			}
			return m, err
		})
		if err != nil {
			return done + m, fmt.Errorf("layer %s: send at %d: %w", l.ID, off+done, err)
		}
		done += k
	}
	return n, nil
}
