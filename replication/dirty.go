package replication

import (
	"math/bits"
	"slices"
	"sync"
)

// bitset is a growable set of region numbers.
type bitset struct {
	w []uint64
	n int // bits set
}

func (b *bitset) has(i uint64) bool {
	wi := i / 64
	return wi < uint64(len(b.w)) && b.w[wi]&(1<<(i%64)) != 0
}

func (b *bitset) set(i uint64) bool {
	wi := i / 64
	if wi >= uint64(len(b.w)) {
		b.w = append(b.w, make([]uint64, int(wi)+1-len(b.w))...)
	}
	if b.w[wi]&(1<<(i%64)) != 0 {
		return false
	}
	b.w[wi] |= 1 << (i % 64)
	b.n++
	return true
}

func (b *bitset) del(i uint64) bool {
	if !b.has(i) {
		return false
	}
	b.w[i/64] &^= 1 << (i % 64)
	b.n--
	return true
}

// next returns the first member >= i.
func (b *bitset) next(i uint64) (uint64, bool) {
	wi := i / 64
	if wi >= uint64(len(b.w)) {
		return 0, false
	}
	if w := b.w[wi] >> (i % 64); w != 0 {
		return i + uint64(bits.TrailingZeros64(w)), true
	}
	for wi++; wi < uint64(len(b.w)); wi++ {
		if b.w[wi] != 0 {
			return wi*64 + uint64(bits.TrailingZeros64(b.w[wi])), true
		}
	}
	return 0, false
}

func (b *bitset) members() []uint64 {
	out := make([]uint64, 0, b.n)
	for i, ok := b.next(0); ok; i, ok = b.next(i + 1) {
		out = append(out, i)
	}
	return out
}

// span is a run of regions [first, last].
type span struct{ first, last uint64 }

func (s span) count() uint64 { return s.last - s.first + 1 }

// spanOf returns the regions the byte range [off, off+n) touches (n > 0).
func spanOf(off, n, regionSize int64) span {
	return span{uint64(off / regionSize), uint64((off + n - 1) / regionSize)}
}

// spanSet is a set of region runs, kept compact: when it grows past its
// limit it is sorted and merged, so its size is bounded by the number of
// distinct runs, not by the number of writes that were added.
type spanSet struct {
	s     []span
	limit int
}

func (ss *spanSet) add(s span) {
	if n := len(ss.s); n > 0 && ss.s[n-1] == s {
		return
	}
	ss.s = append(ss.s, s)
	if ss.limit == 0 {
		ss.limit = 256
	}
	if len(ss.s) > ss.limit {
		ss.compact()
		ss.limit = max(256, 2*len(ss.s))
	}
}

func (ss *spanSet) addAll(o spanSet) {
	for _, s := range o.s {
		ss.add(s)
	}
}

func (ss *spanSet) compact() {
	slices.SortFunc(ss.s, func(a, b span) int {
		if a.first < b.first {
			return -1
		} else if a.first > b.first {
			return 1
		}
		return 0
	})
	out := ss.s[:0]
	for _, s := range ss.s {
		if n := len(out); n > 0 && s.first <= out[n-1].last+1 {
			out[n-1].last = max(out[n-1].last, s.last)
			continue
		}
		out = append(out, s)
	}
	ss.s = out
}

// markBatch is one group commit of DirtyLog.Mark.
type markBatch struct {
	regions []uint64
	done    chan struct{}
	err     error
}

// bigMark is the number of regions from which a mark bypasses the group
// commit (and its per-region bookkeeping) and is written in chunks.
const (
	bigMark   = 4096
	markChunk = 1 << 16
)

// dirtyMap is a replica's dirty regions: the in-memory view of its
// DirtyLog entries, kept in step with it.
//
// A region is clean (not in the log), dirty (in the log; the replica
// misses it) or copied (still in the log, but the resync sent it and the
// replica acknowledged it; cleared from the log after the replica flushed).
// Transitions that add a region to the log persist before they are
// visible: mark returns only once every region it was given is durably
// dirty. Mark and Clear calls are serialized (ioMu), and a region being
// cleared that is marked again gets a Mark after the Clear, so the log
// never ends up clean for a region that is dirty.
type dirtyMap struct {
	log          DirtyLog
	vol, replica string

	ioMu sync.Mutex // serializes the calls to log

	mu       sync.Mutex // protects the fields below
	dirty    bitset
	copied   bitset
	marking  map[uint64]*markBatch // regions whose Mark is pending
	clearing map[uint64]bool       // regions whose Clear is under way
	open     *markBatch            // the batch the next flush writes
	flushing bool                  // a caller is writing batches
}

func newDirtyMap(log DirtyLog, vol, replica string) *dirtyMap {
	return &dirtyMap{log: log, vol: vol, replica: replica,
		marking: map[uint64]*markBatch{}, clearing: map[uint64]bool{}}
}

// load reads the persisted regions (at start, before any other use).
func (d *dirtyMap) load() error {
	rs, err := d.log.Dirty(d.vol, d.replica)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range rs {
		d.dirty.set(r)
	}
	return nil
}

// mark makes the regions of sp durably dirty.
func (d *dirtyMap) mark(sp span) error {
	if sp.count() >= bigMark {
		return d.markBig(sp)
	}
	var wait []*markBatch
	d.mu.Lock()
	for r := sp.first; r <= sp.last; r++ {
		switch {
		case d.dirty.has(r):
		case d.marking[r] != nil:
			wait = appendBatch(wait, d.marking[r])
		case d.copied.has(r) && !d.clearing[r]:
			// Still in the log: only the in-memory state changes.
			d.copied.del(r)
			d.dirty.set(r)
		default:
			d.copied.del(r)
			if d.open == nil {
				d.open = &markBatch{done: make(chan struct{})}
			}
			d.open.regions = append(d.open.regions, r)
			d.marking[r] = d.open
			wait = appendBatch(wait, d.open)
		}
	}
	lead := len(wait) > 0 && !d.flushing
	if lead {
		d.flushing = true
	}
	d.mu.Unlock()
	if lead {
		d.flush()
	}
	var err error
	for _, b := range wait {
		<-b.done
		if b.err != nil {
			err = b.err
		}
	}
	return err
}

func appendBatch(bs []*markBatch, b *markBatch) []*markBatch {
	if slices.Contains(bs, b) {
		return bs
	}
	return append(bs, b)
}

// flush writes open batches until none is left (group commit: the marks
// that arrive while one is written go together in the next).
func (d *dirtyMap) flush() {
	for {
		d.mu.Lock()
		b := d.open
		d.open = nil
		if b == nil {
			d.flushing = false
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
		d.ioMu.Lock()
		err := d.log.Mark(d.vol, d.replica, b.regions)
		d.ioMu.Unlock()
		d.mu.Lock()
		for _, r := range b.regions {
			delete(d.marking, r)
			if err == nil {
				d.dirty.set(r)
			}
		}
		d.mu.Unlock()
		b.err = err
		close(b.done)
	}
}

// markBig marks a long run (a full rebuild, a large unmap) in chunks,
// without the per-region bookkeeping of mark. Regions concurrently marked
// through mark may be written twice; that is harmless.
func (d *dirtyMap) markBig(sp span) error {
	d.ioMu.Lock()
	defer d.ioMu.Unlock()
	chunk := make([]uint64, 0, min(sp.count(), markChunk))
	for r := sp.first; ; r++ {
		chunk = append(chunk, r)
		if len(chunk) == cap(chunk) || r == sp.last {
			if err := d.log.Mark(d.vol, d.replica, chunk); err != nil {
				return err
			}
			d.mu.Lock()
			for _, c := range chunk {
				if !d.clearing[c] {
					d.copied.del(c)
				}
				d.dirty.set(c)
			}
			d.mu.Unlock()
			chunk = chunk[:0]
		}
		if r == sp.last {
			return nil
		}
	}
}

// markSpans marks every run of ss.
func (d *dirtyMap) markSpans(ss spanSet) error {
	ss.compact()
	for _, s := range ss.s {
		if err := d.mark(s); err != nil {
			return err
		}
	}
	return nil
}

// allDirty reports whether every region of sp is dirty (a live write there
// need not be sent: the resync copies it later).
func (d *dirtyMap) allDirty(sp span) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for r := sp.first; r <= sp.last; r++ {
		if !d.dirty.has(r) {
			return false
		}
	}
	return true
}

func (d *dirtyMap) isDirty(r uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dirty.has(r)
}

// nextDirty returns the first dirty region >= from.
func (d *dirtyMap) nextDirty(from uint64) (uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dirty.next(from)
}

// setCopied records that the replica acknowledged region r's data. The
// region stays in the log until clearCopied.
func (d *dirtyMap) setCopied(r uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dirty.del(r) {
		d.copied.set(r)
	}
}

// clearCopied removes the copied regions from the log (after the replica
// flushed them).
func (d *dirtyMap) clearCopied() error {
	d.ioMu.Lock()
	defer d.ioMu.Unlock()
	d.mu.Lock()
	list := d.copied.members()
	for _, r := range list {
		d.clearing[r] = true
	}
	d.mu.Unlock()
	if len(list) == 0 {
		return nil
	}
	var err error
	for i := 0; i < len(list) && err == nil; i += markChunk {
		err = d.log.Clear(d.vol, d.replica, list[i:min(len(list), i+markChunk)])
	}
	d.mu.Lock()
	for _, r := range list {
		delete(d.clearing, r)
		if err == nil {
			// A region marked meanwhile left copied and has its Mark
			// queued behind this Clear.
			d.copied.del(r)
		}
	}
	d.mu.Unlock()
	return err
}

// dirtyList returns the dirty regions, ascending.
func (d *dirtyMap) dirtyList() []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dirty.members()
}

// counts returns the number of dirty and copied regions.
func (d *dirtyMap) counts() (dirty, copied int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dirty.n, d.copied.n
}
