package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"tandem.io/tandem/volume/block"
)

// memCopy is a Copy over a byte slice, with 4 KiB allocation tracking and
// counters of flushes and FUA writes.
type memCopy struct {
	mu     sync.RWMutex
	data   []byte
	mapped []bool // per PhysicalBlockSize block

	// durable is what survives powerLoss: the data as of the last flush,
	// plus FUA writes. Kept only once trackDurable was called.
	durableData   []byte
	durableMapped []bool

	flushes, fuaWrites, writes atomic.Int64
	// hook, if set, runs before a write or unmap is applied (to block or
	// slow it); an error fails it.
	hook atomic.Pointer[func(off, n int64) error]
}

func (c *memCopy) setHook(f func(off, n int64) error) {
	if f == nil {
		c.hook.Store(nil)
		return
	}
	c.hook.Store(&f)
}

func (c *memCopy) beforeWrite(off, n int64) error {
	if f := c.hook.Load(); f != nil {
		return (*f)(off, n)
	}
	return nil
}

func newMemCopy(size int64) *memCopy {
	return &memCopy{data: make([]byte, size), mapped: make([]bool, (size+block.PhysicalBlockSize-1)/block.PhysicalBlockSize)}
}

func (c *memCopy) Size() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return int64(len(c.data))
}

func (c *memCopy) check(off, n int64) error {
	if off < 0 || n < 0 || off > int64(len(c.data)) || n > int64(len(c.data))-off {
		return fmt.Errorf("%d bytes at %d of %d: %w", n, off, len(c.data), block.ErrOutOfRange)
	}
	return nil
}

func (c *memCopy) ReadAt(ctx context.Context, p []byte, off int64) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	copy(p, c.data[off:])
	return nil
}

func (c *memCopy) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := c.beforeWrite(off, int64(len(p))); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	copy(c.data[off:], p)
	for b := off / block.PhysicalBlockSize; b*block.PhysicalBlockSize < off+int64(len(p)); b++ {
		c.mapped[b] = true
	}
	c.writes.Add(1)
	if fua {
		c.fuaWrites.Add(1)
		if c.durableData != nil {
			copy(c.durableData[off:], p)
			for b := off / block.PhysicalBlockSize; b*block.PhysicalBlockSize < off+int64(len(p)); b++ {
				c.durableMapped[b] = true
			}
		}
	}
	return nil
}

// trackDurable starts keeping what a power loss would leave.
func (c *memCopy) trackDurable() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.durableData, c.durableMapped = slices.Clone(c.data), slices.Clone(c.mapped)
}

// powerLoss drops every write not flushed (nor FUA).
func (c *memCopy) powerLoss() {
	c.mu.Lock()
	defer c.mu.Unlock()
	copy(c.data, c.durableData)
	copy(c.mapped, c.durableMapped)
}

func (c *memCopy) Flush(ctx context.Context) error {
	c.flushes.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.durableData != nil {
		copy(c.durableData, c.data)
		copy(c.durableMapped, c.mapped)
	}
	return nil
}

func (c *memCopy) Unmap(ctx context.Context, off, n int64) error {
	if err := c.beforeWrite(off, n); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.check(off, n); err != nil {
		return err
	}
	clear(c.data[off : off+n])
	for b := (off + block.PhysicalBlockSize - 1) / block.PhysicalBlockSize; (b+1)*block.PhysicalBlockSize <= off+n; b++ {
		c.mapped[b] = false
	}
	return nil
}

func (c *memCopy) Mapping(ctx context.Context, off int64) (bool, int64, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.check(off, 1); err != nil {
		return false, 0, err
	}
	b := off / block.PhysicalBlockSize
	state := c.mapped[b]
	e := b + 1
	for e < int64(len(c.mapped)) && c.mapped[e] == state {
		e++
	}
	return state, min(e*block.PhysicalBlockSize, int64(len(c.data))) - off, nil
}

// snapshot returns a copy of the data.
func (c *memCopy) snapshot() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.data)
}

// setRaw changes the data behind the replication's back.
func (c *memCopy) setRaw(off int64, p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	copy(c.data[off:], p)
	for b := off / block.PhysicalBlockSize; b*block.PhysicalBlockSize < off+int64(len(p)); b++ {
		c.mapped[b] = true
	}
}

func (c *memCopy) resize(size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.data = append(c.data, make([]byte, size-int64(len(c.data)))...)
	c.mapped = append(c.mapped, make([]bool, (size+block.PhysicalBlockSize-1)/block.PhysicalBlockSize-int64(len(c.mapped)))...)
}

// barrierRecord is a barrier a memCopies applied and the copy's data then.
type barrierRecord struct {
	op   string
	data []byte
}

// memCopies serves memCopy copies by volume ID.
type memCopies struct {
	mu       sync.Mutex
	copies   map[string]*memCopy
	barriers []barrierRecord
	// barrier, if set, applies an op (else it is only recorded).
	barrier func(c *memCopy, op []byte) error
}

func newMemCopies() *memCopies { return &memCopies{copies: map[string]*memCopy{}} }

func (cs *memCopies) add(id string, c *memCopy) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.copies[id] = c
}

func (cs *memCopies) Copy(id string) (Copy, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c := cs.copies[id]
	if c == nil {
		return nil, fmt.Errorf("no copy of volume %s", id)
	}
	return c, nil
}

func (cs *memCopies) Barrier(ctx context.Context, id string, op []byte) error {
	cs.mu.Lock()
	c := cs.copies[id]
	apply := cs.barrier
	cs.mu.Unlock()
	if c == nil {
		return fmt.Errorf("no copy of volume %s", id)
	}
	if apply != nil {
		if err := apply(c, op); err != nil {
			return err
		}
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.barriers = append(cs.barriers, barrierRecord{string(op), c.snapshot()})
	return nil
}

func (cs *memCopies) records() []barrierRecord {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return slices.Clone(cs.barriers)
}

// eventLog records events in the order they happened, across fakes.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) add(format string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fmt.Sprintf(format, args...))
}

func (l *eventLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// memEpochs is an Epochs in memory.
type memEpochs struct {
	mu     sync.Mutex
	epochs map[string]uint64
	log    *eventLog
	fail   error
}

func newMemEpochs() *memEpochs { return &memEpochs{epochs: map[string]uint64{}} }

func (e *memEpochs) Epoch(id string) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.epochs[id], nil
}

func (e *memEpochs) SetEpoch(id string, epoch uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fail != nil {
		return e.fail
	}
	e.epochs[id] = epoch
	e.log.add("set epoch %s %d", id, epoch)
	return nil
}

// memDirtyLog is a DirtyLog in memory.
type memDirtyLog struct {
	mu    sync.Mutex
	sets  map[[2]string]map[uint64]bool
	marks int // Mark calls
	// markCalls counts Mark calls per (volume, replica).
	markCalls map[[2]string]int
	fail      error
	// concurrent detects Mark/Clear calls for one replica that overlap.
	busy       map[[2]string]bool
	concurrent bool
}

func newMemDirtyLog() *memDirtyLog {
	return &memDirtyLog{sets: map[[2]string]map[uint64]bool{}, busy: map[[2]string]bool{}, markCalls: map[[2]string]int{}}
}

func (d *memDirtyLog) enter(k [2]string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy[k] {
		d.concurrent = true
	}
	d.busy[k] = true
	return d.fail
}

func (d *memDirtyLog) leave(k [2]string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.busy[k] = false
}

func (d *memDirtyLog) Mark(vol, rep string, regions []uint64) error {
	k := [2]string{vol, rep}
	if err := d.enter(k); err != nil {
		d.leave(k)
		return err
	}
	defer d.leave(k)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.marks++
	d.markCalls[k]++
	if d.sets[k] == nil {
		d.sets[k] = map[uint64]bool{}
	}
	for _, r := range regions {
		d.sets[k][r] = true
	}
	return nil
}

func (d *memDirtyLog) Dirty(vol, rep string) ([]uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []uint64
	for r := range d.sets[[2]string{vol, rep}] {
		out = append(out, r)
	}
	slices.Sort(out)
	return out, nil
}

func (d *memDirtyLog) Clear(vol, rep string, regions []uint64) error {
	k := [2]string{vol, rep}
	if err := d.enter(k); err != nil {
		d.leave(k)
		return err
	}
	defer d.leave(k)
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(regions) == 0 {
		delete(d.sets, k)
		return nil
	}
	for _, r := range regions {
		delete(d.sets[k], r)
	}
	return nil
}

func (d *memDirtyLog) has(vol, rep string, r uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sets[[2]string{vol, rep}][r]
}

// marksFor returns the Mark calls for replica of testVol.
func (d *memDirtyLog) marksFor(rep string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.markCalls[[2]string{testVol, rep}]
}

// exists says whether replica has a map for testVol (even an empty one).
func (d *memDirtyLog) exists(rep string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.sets[[2]string{testVol, rep}]
	return ok
}

// crashableLog is the DirtyLog of a primary that can crash: once crashed,
// every call fails and changes nothing (the node is gone).
type crashableLog struct {
	log     DirtyLog
	crashed atomic.Bool
}

func (l *crashableLog) Mark(vol, rep string, regions []uint64) error {
	if l.crashed.Load() {
		return errInjected
	}
	return l.log.Mark(vol, rep, regions)
}

func (l *crashableLog) Dirty(vol, rep string) ([]uint64, error) {
	if l.crashed.Load() {
		return nil, errInjected
	}
	return l.log.Dirty(vol, rep)
}

func (l *crashableLog) Clear(vol, rep string, regions []uint64) error {
	if l.crashed.Load() {
		return errInjected
	}
	return l.log.Clear(vol, rep, regions)
}

func (d *memDirtyLog) setFail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail = err
}

var errInjected = errors.New("injected failure")
