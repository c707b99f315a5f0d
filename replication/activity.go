package replication

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"tandem.io/tandem/volume/block"
)

// ActivityLog is the replica name under which a Mirror keeps, in the
// DirtyLog, the regions that may have writes in flight. Node names never
// contain '@', so it is no node's.
const ActivityLog = "@active"

// activeRegion is a region of the activity log, in memory.
type activeRegion struct {
	inflight int32  // writes between begin and end
	stamp    uint64 // activity.gen when the last write began
	idleAt   int64  // activity.now() when inflight last dropped to 0
	durable  bool   // its Mark succeeded: writes need not mark it again
}

// activity is the Mirror's activity log: every region a write or unmap
// touches is durably in the DirtyLog under ActivityLog before any copy
// changes, and leaves it only once no write to it is in flight and every
// copy flushed after its last write — so after a crash, the regions where
// the copies may differ are all in the log.
//
// Writes to regions already in the log cost no Mark; marks of new ones go
// through a dirtyMap (group commit). The log holds at most limit regions:
// a write that needs more waits while the cleaner (one goroutine, owned
// by the Mirror) flushes every copy and retires idle regions. Without
// such pressure the cleaner retires regions idle for idle, only while
// more than low are in the log (a few hot regions cost nothing to keep).
type activity struct {
	m     *Mirror
	log   *dirtyMap // the regions under ActivityLog
	limit int
	low   int
	idle  time.Duration
	epoch time.Time // now() is measured from it (monotonic)
	kick  chan struct{}
	// repaired is set once NewMirror made the regions a crash left
	// identical: until then Close must not clear the log.
	repaired atomic.Bool

	mu       sync.Mutex // protects the fields below
	regions  map[uint64]activeRegion
	gen      uint64 // flushes the cleaner started
	inflight int    // writes between begin and end
	urgent   bool   // a write waits for room
	draining bool   // Close waits for inflight to reach 0
	wake     chan struct{}
	peak     int // the most regions the log held (tests)
}

func newActivity(m *Mirror) *activity {
	return &activity{m: m, log: newDirtyMap(m.cfg.Dirty, m.cfg.VolumeID, ActivityLog),
		limit: m.cfg.ActiveRegions, low: m.cfg.ActiveRegions / 8, idle: m.cfg.ActiveIdle,
		epoch: time.Now(), kick: make(chan struct{}, 1),
		regions: map[uint64]activeRegion{}, wake: make(chan struct{})}
}

func (a *activity) now() int64 { return int64(time.Since(a.epoch)) }

// maxSpan is the most regions one write may touch: a longer one is split
// (mutate), so that one always fits once idle regions are retired.
func (a *activity) maxSpan() uint64 { return uint64(max(1, a.limit/4)) }

// broadcastLocked wakes every waiter; a.mu is held.
func (a *activity) broadcastLocked() {
	close(a.wake)
	a.wake = make(chan struct{})
}

// wakeAll makes waiting writes look again (the Mirror stops).
func (a *activity) wakeAll() {
	a.mu.Lock()
	a.broadcastLocked()
	a.mu.Unlock()
}

func (a *activity) kickCleaner() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// begin records that a write to sp is in flight, durably before it
// returns; end must follow if it returns nil. It waits while the log is
// full.
func (a *activity) begin(ctx context.Context, sp span) error {
	a.mu.Lock()
	for {
		if err := a.m.usable(); err != nil {
			a.mu.Unlock()
			return err
		}
		need := 0
		for r := sp.first; r <= sp.last; r++ {
			if _, ok := a.regions[r]; !ok {
				need++
			}
		}
		if need == 0 || len(a.regions)+need <= a.limit {
			break
		}
		a.urgent = true
		w := a.wake
		a.mu.Unlock()
		a.kickCleaner()
		select {
		case <-w:
		case <-ctx.Done():
			return fmt.Errorf("volume %s: waiting for room in the activity log: %w", a.m.cfg.VolumeID, context.Cause(ctx))
		}
		a.mu.Lock()
	}
	durable := true
	for r := sp.first; r <= sp.last; r++ {
		e := a.regions[r]
		e.inflight++
		e.stamp = a.gen
		durable = durable && e.durable
		a.regions[r] = e
	}
	a.inflight++
	a.peak = max(a.peak, len(a.regions))
	a.mu.Unlock()
	if durable {
		return nil
	}
	// Regions whose Mark is pending (another write's) wait for it there.
	if err := a.log.mark(sp); err != nil {
		a.end(sp)
		return fmt.Errorf("volume %s: recording regions %d..%d in the activity log: %w (%w)",
			a.m.cfg.VolumeID, sp.first, sp.last, block.ErrMedium, err)
	}
	a.mu.Lock()
	for r := sp.first; r <= sp.last; r++ {
		e := a.regions[r]
		e.durable = true
		a.regions[r] = e
	}
	a.mu.Unlock()
	return nil
}

// end records that the write to sp that began is over.
func (a *activity) end(sp span) {
	now := a.now()
	a.mu.Lock()
	for r := sp.first; r <= sp.last; r++ {
		e := a.regions[r]
		if e.inflight--; e.inflight == 0 {
			e.idleAt = now
		}
		a.regions[r] = e
	}
	a.inflight--
	if a.draining && a.inflight == 0 {
		a.broadcastLocked()
	}
	urgent := a.urgent
	a.mu.Unlock()
	if urgent {
		// A region just became idle: the cleaner may have found none.
		a.kickCleaner()
	}
}

// run retires idle regions until the Mirror stops.
func (a *activity) run() {
	m := a.m
	tick := time.NewTicker(max(a.idle/2, time.Millisecond))
	defer tick.Stop()
	backoff := minBackoff
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-tick.C:
		case <-a.kick:
		}
		if m.usable() != nil {
			return
		}
		err := a.clean()
		if err == nil {
			backoff = minBackoff
			continue
		}
		if m.usable() != nil {
			return
		}
		m.log.Warn("replication: could not retire idle regions from the activity log", "err", err, "retry", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-m.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// clean flushes every copy and retires the regions that were idle before
// the flush began and had no write since.
func (a *activity) clean() error {
	gen, idle := a.pick()
	if len(idle) == 0 {
		return nil
	}
	if err := a.m.Flush(a.m.ctx); err != nil {
		return fmt.Errorf("flushing the copies: %w", err)
	}
	n := a.retire(gen, idle)
	if err := a.log.clearCopied(); err != nil {
		return fmt.Errorf("clearing %d regions from the activity log: %w", n, err)
	}
	return nil
}

// pick starts a flush generation and returns it with the regions to
// retire after it: while a write waits for room, the longest idle until
// the log is at three quarters of its limit; and, when the log holds more
// than low, every region idle for a.idle.
func (a *activity) pick() (uint64, []uint64) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gen++
	if !a.urgent && len(a.regions) <= a.low {
		return a.gen, nil
	}
	type idleRegion struct {
		r     uint64
		since int64
	}
	var idle []idleRegion
	for r, e := range a.regions {
		if e.inflight == 0 {
			idle = append(idle, idleRegion{r, e.idleAt})
		}
	}
	excess := 0
	if a.urgent {
		excess = len(a.regions) - a.limit*3/4
		slices.SortFunc(idle, func(x, y idleRegion) int { return cmp.Compare(x.since, y.since) })
	}
	var out []uint64
	for i, x := range idle {
		if i < excess || time.Duration(now-x.since) >= a.idle {
			out = append(out, x.r)
		}
	}
	return a.gen, out
}

// retire removes the regions picked at gen that had no write since from
// the log in memory, and has them cleared from the DirtyLog (clearCopied).
func (a *activity) retire(gen uint64, regions []uint64) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, r := range regions {
		if e, ok := a.regions[r]; ok && e.inflight == 0 && e.stamp < gen {
			delete(a.regions, r)
			// Under a.mu: a write beginning now finds the region gone
			// and marks it again, after this Clear if need be.
			a.log.setCopied(r)
			n++
		}
	}
	a.urgent = false
	a.broadcastLocked()
	return n
}

// drain stops new writes from beginning (the Mirror is closing) and waits
// for those that began to end.
func (a *activity) drain() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.draining = true
	a.broadcastLocked()
	for a.inflight > 0 {
		w := a.wake
		a.mu.Unlock()
		<-w
		a.mu.Lock()
	}
}

// clearAll deletes the log (a clean stop: every copy flushed, no write in
// flight).
func (a *activity) clearAll() error {
	a.log.ioMu.Lock()
	defer a.log.ioMu.Unlock()
	return a.m.cfg.Dirty.Clear(a.m.cfg.VolumeID, ActivityLog, nil)
}

// size returns the regions in the log and the most it held.
func (a *activity) size() (n, peak int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.regions), a.peak
}

// repair makes the regions a crash left in the log identical on every
// connected in-sync replica — the local copy's data written, or unmapped
// where it is unallocated — flushes them, records the regions dirty for
// every other replica, and clears them from the log. A replica failing
// meanwhile is dropped as usual. It runs in NewMirror, before any I/O.
func (a *activity) repair(ctx context.Context) error {
	m := a.m
	if err := a.log.load(); err != nil {
		return fmt.Errorf("reading the activity log: %w", err)
	}
	list := a.log.dirtyList()
	if len(list) == 0 {
		a.repaired.Store(true)
		return nil
	}
	set := m.set()
	var targets []*replica
	var peers []*peer
	for _, r := range set {
		r.mu.Lock()
		if r.state == stateSync && r.peer != nil {
			targets = append(targets, r)
			peers = append(peers, r.peer)
		}
		r.mu.Unlock()
	}
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, r := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.repairRegions(ctx, peers[i], list)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		// Not the replicas' fault: none is dropped, the log stays, and
		// the next Mirror repairs.
		return err
	}
	var all spanSet
	for _, reg := range list {
		all.add(span{reg, reg})
	}
	var repaired, failed []string
	for _, r := range set {
		if i := slices.Index(targets, r); i >= 0 && errs[i] == nil {
			repaired = append(repaired, r.name)
			continue
		}
		if i := slices.Index(targets, r); i >= 0 {
			failed = append(failed, r.name)
			m.log.Warn("replication: repair of a replica after a crash failed; dropping it", "replica", r.name, "err", errs[i])
		}
		// It may differ from the local copy there too.
		if err := r.dirty.markSpans(all); err != nil {
			return fmt.Errorf("marking %d regions of the activity log dirty for replica %s: %w", len(list), r.name, err)
		}
	}
	if err := m.local.Flush(ctx); err != nil {
		return fmt.Errorf("flushing the local copy: %w", err)
	}
	for _, reg := range list {
		a.log.setCopied(reg)
	}
	if err := a.log.clearCopied(); err != nil {
		return fmt.Errorf("clearing the activity log: %w", err)
	}
	a.repaired.Store(true)
	m.log.Warn("replication: repaired the regions a crash left in the activity log",
		"regions", len(list), "replicas", repaired, "failed", failed)
	return nil
}

// repairRegions copies the regions of list to the replica from the local
// copy and flushes it. If the replica fails, its stream is failed (it is
// dropped); if ctx ends, it is left as it is.
func (r *replica) repairRegions(ctx context.Context, p *peer, list []uint64) error {
	size := r.m.local.Size()
	sem := make(chan struct{}, resyncWindow)
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		if ctx.Err() == nil {
			p.fail(err)
		}
	}
	for _, reg := range list {
		if int64(reg)*r.m.cfg.RegionSize >= size {
			continue
		}
		if err := ctx.Err(); err != nil {
			errOnce.Do(func() { firstErr = err })
			break
		}
		select {
		case sem <- struct{}{}:
		case <-p.failc:
		}
		if p.failed() {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := r.sendRegions(ctx, p, span{reg, reg}); err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && p.failed() {
		firstErr = fmt.Errorf("replica %s: stream failed during the repair", r.name)
	}
	if firstErr != nil {
		return firstErr
	}
	var fwg sync.WaitGroup
	c := &call{kind: KindFlush, wg: &fwg}
	if err := p.send(c); err != nil {
		return err
	}
	fwg.Wait()
	return c.err
}
