package replication

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"tandem.io/tandem/volume/block"
)

// replicaState is where a replica stands, as the Mirror sees it.
//
//	sync ──fail──▶ dropping ──Drop ok──▶ out ──connected──▶ resync
//	  ▲                ▲                   ▲                  │ │
//	  │                └────fail───────────│──── rejoining ◀──┘ │ all copied
//	  └──────── Rejoin ok ─────────────────│──────────┘         │
//	                                       └────────fail────────┘
//	any ──RemoveReplica──▶ removed (final)
//
// sync and rejoining are treated alike by I/O: every write waits for the
// replica, and a failure drops it (rejoining: Rejoin may have committed).
// In dropping, writes mark their regions and wait for Drop. In out,
// writes mark their regions. In resync, writes go to the replica unless
// all their regions are dirty anyway; a failure only marks. In removed,
// writes ignore the replica, and a failure of its stream neither marks
// nor drops: it is no copy any more.
type replicaState int

const (
	stateSync replicaState = iota
	stateRejoining
	stateDropping
	stateOut
	stateResync
	stateRemoved
)

// Backoff between attempts to reach an out-of-sync replica (or to drop or
// rejoin it).
const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// resyncWindow is how many region copies a resync keeps in flight;
// clearEvery how many regions it copies between flushing the replica and
// clearing them from the DirtyLog; maxUnmapRun how many unallocated
// regions one Unmap covers.
const (
	resyncWindow = 4
	clearEvery   = 64
	maxUnmapRun  = 1024
)

// dropAttempt is one Drop, with the marks before it.
type dropAttempt struct {
	done chan struct{}
	err  error // set before done is closed
}

func (a *dropAttempt) finished() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// replica is one replica of the Mirror: its state, its stream and dirty
// map, and the goroutine that drops, resyncs and rejoins it.
type replica struct {
	m     *Mirror
	name  string
	dirty *dirtyMap
	kick  chan struct{}

	// ctx is cancelled when the replica is removed or the Mirror stops;
	// the replica's goroutines (its loop, drops, stream) use it and are
	// counted in wg, so that RemoveReplica can wait for them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	goMu   sync.Mutex // protects stopped
	// stopped is set by stop before it waits: no goroutine starts after.
	stopped bool

	catalogMu sync.Mutex // held across Drop and Rejoin: never both at once

	mu    sync.Mutex // protects the fields below
	state replicaState
	peer  *peer        // sync, rejoining, resync
	drop  *dropAttempt // dropping: the current or last attempt
	// lost are regions whose mark failed: marked before the next Drop or
	// resync, which do not start until they are persisted.
	lost    spanSet
	lostAll bool
	lastErr error
	// Progress of the current resync.
	regionsCopied, bytesCopied int64
}

func newReplica(m *Mirror, name string, st replicaState) *replica {
	ctx, cancel := context.WithCancel(m.ctx)
	return &replica{m: m, name: name, state: st, kick: make(chan struct{}, 1), ctx: ctx, cancel: cancel,
		dirty: newDirtyMap(m.cfg.Dirty, m.cfg.VolumeID, name)}
}

// spawn runs fn in a goroutine that stop and the Mirror's Close wait for;
// false if either already stopped.
func (r *replica) spawn(fn func()) bool {
	r.goMu.Lock()
	defer r.goMu.Unlock()
	if r.stopped {
		return false
	}
	r.wg.Add(1)
	if !r.m.spawn(func() {
		defer r.wg.Done()
		fn()
	}) {
		r.wg.Done()
		return false
	}
	return true
}

// stop waits for the replica's goroutines (its context must be cancelled
// and its stream failed, or this waits for them to end on their own).
func (r *replica) stop() {
	r.goMu.Lock()
	r.stopped = true
	r.goMu.Unlock()
	r.wg.Wait()
}

func (r *replica) kickLoop() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// plan decides what a write or unmap of sp does with the replica. The
// caller holds the gate shared (and sp's region lock when resyncs run).
func (r *replica) plan(sp span) action {
	a := action{r: r}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case stateSync, stateRejoining:
		a.p = r.peer
	case stateResync:
		// A region that is dirty is copied later with whatever the local
		// copy then holds; the region lock keeps the copier out now.
		if !r.dirty.allDirty(sp) {
			a.p = r.peer
		}
	case stateOut:
		a.mark = true
	case stateDropping:
		a.mark, a.awaitDrop = true, true
	}
	return a
}

// markAll marks every region of the volume dirty (full rebuild).
func (r *replica) markAll() error {
	rs := r.m.cfg.RegionSize
	n := (r.m.local.Size() + rs - 1) / rs
	if n == 0 {
		return nil
	}
	return r.dirty.markBig(span{0, uint64(n - 1)})
}

// markLost marks sp dirty; if that fails, sp is kept to be marked before
// the next Drop or resync.
func (r *replica) markLost(sp span) error {
	err := r.dirty.mark(sp)
	if err != nil {
		r.mu.Lock()
		r.lost.add(sp)
		r.mu.Unlock()
	}
	return err
}

// markFailure marks what a failed stream may have lost.
func (r *replica) markFailure(f peerFailure) error {
	var err error
	if f.all {
		err = r.markAll()
	} else {
		err = r.dirty.markSpans(f.lost)
	}
	if err != nil {
		r.mu.Lock()
		r.lost.addAll(f.lost)
		r.lostAll = r.lostAll || f.all
		r.mu.Unlock()
	}
	return err
}

// flushLost persists the regions whose marks failed earlier.
func (r *replica) flushLost() error {
	r.mu.Lock()
	lost, all := r.lost, r.lostAll
	r.lost, r.lostAll = spanSet{}, false
	r.mu.Unlock()
	if len(lost.s) == 0 && !all {
		return nil
	}
	return r.markFailure(peerFailure{lost: lost, all: all})
}

// peerFailed handles the failure of the replica's stream (called by the
// peer before it completes its outstanding calls): an in-sync replica has
// what it may miss marked and is dropped, and the writes waiting for it
// complete only if that succeeded; a resyncing one only has it marked.
func (r *replica) peerFailed(p *peer, f peerFailure) error {
	m := r.m
	if errors.Is(f.err, ErrDeposed) {
		m.depose(f.err)
		return f.err
	}
	r.mu.Lock()
	if r.state == stateRemoved {
		// Out of the placement: what it missed does not matter.
		if r.peer == p {
			r.peer = nil
		}
		r.mu.Unlock()
		return nil
	}
	if r.peer != p {
		// A stream that never opened (its hello failed).
		r.mu.Unlock()
		return f.err
	}
	r.peer = nil
	r.lastErr = f.err
	st := r.state
	if m.closing.Load() {
		// No Drop while closing: the marks tell the next Mirror.
		r.state = stateOut
		r.mu.Unlock()
		if err := r.markFailure(f); err != nil {
			m.log.Error("replication: marking regions of a closed stream", "replica", r.name, "err", err)
		}
		return fmt.Errorf("volume %s: %w", m.cfg.VolumeID, block.ErrClosed)
	}
	switch st {
	case stateSync, stateRejoining:
		r.state = stateDropping
		r.lost.addAll(f.lost)
		r.lostAll = r.lostAll || f.all
		a := r.startDropLocked()
		r.mu.Unlock()
		m.log.Warn("replication: replica failed; dropping it from the in-sync set", "replica", r.name, "err", f.err)
		return r.dropOutcome(a)
	case stateResync:
		r.state = stateOut
		r.mu.Unlock()
		m.log.Info("replication: resync stream failed", "replica", r.name, "err", f.err)
		if err := r.markFailure(f); err != nil {
			return fmt.Errorf("volume %s: marking regions replica %s missed: %w (%w)", m.cfg.VolumeID, r.name, block.ErrMedium, err)
		}
		return nil
	}
	r.mu.Unlock()
	return f.err
}

// startDropLocked starts a drop attempt; r.mu is held.
func (r *replica) startDropLocked() *dropAttempt {
	a := &dropAttempt{done: make(chan struct{})}
	r.drop = a
	if !r.spawn(func() { r.runDrop(a) }) {
		a.err = fmt.Errorf("volume %s: %w", r.m.cfg.VolumeID, block.ErrClosed)
		close(a.done)
	}
	return a
}

// runDrop persists what the replica may miss, then commits the drop.
func (r *replica) runDrop(a *dropAttempt) {
	m := r.m
	r.catalogMu.Lock()
	err := r.flushLost()
	if err != nil {
		err = fmt.Errorf("volume %s: marking the regions replica %s misses: %w (%w)", m.cfg.VolumeID, r.name, block.ErrMedium, err)
	} else {
		ctx, cancel := context.WithTimeout(r.ctx, m.cfg.DropTimeout)
		err = m.cfg.Drop(ctx, r.name)
		cancel()
		if err != nil {
			err = fmt.Errorf("volume %s: dropping replica %s from the in-sync set: %w (%w)", m.cfg.VolumeID, r.name, block.ErrMedium, err)
		}
	}
	r.catalogMu.Unlock()
	r.mu.Lock()
	switch {
	case r.state == stateRemoved:
	case err == nil:
		r.state = stateOut
		r.regionsCopied, r.bytesCopied = 0, 0
		m.log.Info("replication: replica dropped from the in-sync set", "replica", r.name)
	default:
		r.lastErr = err
		m.log.Warn("replication: could not drop replica; writes fail until it is dropped", "replica", r.name, "err", err)
	}
	a.err = err
	close(a.done)
	r.mu.Unlock()
	if err == nil {
		// Out now: the loop starts the resync. Not after a failure: the
		// loop waits for a.done itself, and a pending kick would cut its
		// backoff short (a Drop retried back to back).
		r.kickLoop()
	}
}

// awaitDrop returns once the replica is out of the in-sync set, starting
// a drop attempt if the last one failed; it fails if this attempt does.
func (r *replica) awaitDrop() error {
	r.mu.Lock()
	if r.state != stateDropping {
		r.mu.Unlock()
		return nil
	}
	a := r.drop
	if a == nil || a.finished() && a.err != nil {
		a = r.startDropLocked()
	}
	r.mu.Unlock()
	return r.dropOutcome(a)
}

// dropOutcome waits for a drop attempt: its error, or nil if the replica
// was removed meanwhile (the writes waiting for it need it no more).
func (r *replica) dropOutcome(a *dropAttempt) error {
	<-a.done
	if a.err == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == stateRemoved {
		return nil
	}
	return a.err
}

// wait sleeps d (forever if 0) or until kicked; false if the Mirror stops.
func (r *replica) wait(d time.Duration) bool {
	var tc <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		tc = t.C
	}
	select {
	case <-tc:
	case <-r.kick:
	case <-r.ctx.Done():
		return false
	}
	return r.ctx.Err() == nil
}

// loop drops, resyncs and rejoins the replica until the Mirror stops or
// the replica is removed.
func (r *replica) loop() {
	m := r.m
	backoff := minBackoff
	for r.ctx.Err() == nil && m.deposed.Load() == nil {
		r.mu.Lock()
		st, a := r.state, r.drop
		r.mu.Unlock()
		switch st {
		case stateRemoved:
			return
		case stateSync, stateRejoining, stateResync:
			r.wait(0)
		case stateDropping:
			if a != nil && !a.finished() {
				select {
				case <-a.done:
				case <-r.ctx.Done():
				}
				continue
			}
			if a != nil && a.err != nil {
				if !r.wait(backoff) {
					return
				}
				backoff = min(2*backoff, maxBackoff)
			}
			if r.awaitDrop() == nil {
				backoff = minBackoff
			}
		case stateOut:
			err := r.resync()
			if err == nil {
				backoff = minBackoff
				continue
			}
			if r.ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			r.lastErr = err
			r.mu.Unlock()
			m.log.Debug("replication: resync attempt failed", "replica", r.name, "err", err, "retry", backoff)
			if !r.wait(backoff) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
		}
	}
}

// resync connects to the out-of-sync replica, copies its dirty regions
// while live writes go to it too, and rejoins it.
func (r *replica) resync() error {
	m := r.m
	if err := r.flushLost(); err != nil {
		return fmt.Errorf("marking regions replica %s missed: %w", r.name, err)
	}
	p, err := m.connect(r.ctx, r)
	if err != nil {
		return err
	}
	// Switch to resync with no write in flight: every write from now on
	// takes its region lock and sees the new state.
	m.gate.Lock()
	r.mu.Lock()
	ok := r.state == stateOut && !p.failed()
	if ok {
		r.state, r.peer = stateResync, p
		r.regionsCopied, r.bytesCopied = 0, 0
		m.regionLocking.Add(1)
	}
	r.mu.Unlock()
	m.gate.Unlock()
	if !ok {
		p.fail(errors.New("resync abandoned"))
		<-p.done
		return errors.New("replica left the out-of-sync state")
	}
	d, _ := r.dirty.counts()
	m.log.Info("replication: resyncing replica", "replica", r.name, "dirty_regions", d)
	locking := true
	defer func() {
		if locking {
			m.regionLocking.Add(-1)
		}
	}()
	for {
		if err := r.copyDirty(p); err != nil {
			p.fail(err)
			// What the stream may have lost is marked before the next
			// attempt starts.
			<-p.done
			return err
		}
		// Rejoin only with nothing dirty and nothing in flight: switch
		// with the gate held, so no write that saw resync is pending.
		m.gate.Lock()
		r.mu.Lock()
		d, c := r.dirty.counts()
		ok := r.state == stateResync && r.peer == p && d+c == 0 && len(r.lost.s) == 0 && !r.lostAll
		if ok {
			r.state = stateRejoining
			m.regionLocking.Add(-1)
			locking = false
		}
		st := r.state
		r.mu.Unlock()
		m.gate.Unlock()
		if ok {
			break
		}
		if st != stateResync {
			<-p.done
			return fmt.Errorf("replica %s: resync stream failed", r.name)
		}
		// A barrier marked regions meanwhile: copy them too.
	}
	return r.rejoin(p)
}

// rejoin commits the replica back into the in-sync set, retrying while
// the stream is healthy.
func (r *replica) rejoin(p *peer) error {
	m := r.m
	backoff := minBackoff
	for {
		r.catalogMu.Lock()
		r.mu.Lock()
		st := r.state
		r.mu.Unlock()
		if st != stateRejoining {
			r.catalogMu.Unlock()
			return fmt.Errorf("replica %s failed while rejoining", r.name)
		}
		ctx, cancel := context.WithTimeout(r.ctx, m.cfg.DropTimeout)
		err := m.cfg.Rejoin(ctx, r.name)
		cancel()
		if err == nil {
			r.mu.Lock()
			if r.state == stateRejoining {
				r.state = stateSync
			}
			r.mu.Unlock()
			r.catalogMu.Unlock()
			m.log.Info("replication: replica back in the in-sync set", "replica", r.name)
			return nil
		}
		r.catalogMu.Unlock()
		m.log.Warn("replication: rejoin failed; retrying", "replica", r.name, "err", err)
		if !r.wait(backoff) {
			return r.ctx.Err()
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// copyDirty copies dirty regions, a few at a time, until none is left;
// every clearEvery regions (and at the end) it flushes the replica and
// clears the copied regions from the DirtyLog.
func (r *replica) copyDirty(p *peer) error {
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, resyncWindow)
		errMu    sync.Mutex
		firstErr error
		since    uint64
		cursor   uint64
	)
	setErr := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
		p.fail(err)
	}
	getErr := func() error {
		errMu.Lock()
		defer errMu.Unlock()
		return firstErr
	}
	for {
		if err := getErr(); err != nil {
			wg.Wait()
			return err
		}
		if p.failed() || r.ctx.Err() != nil {
			wg.Wait()
			return fmt.Errorf("replica %s: resync stopped", r.name)
		}
		reg, ok := r.dirty.nextDirty(cursor)
		if !ok || since >= clearEvery {
			wg.Wait()
			if err := getErr(); err != nil {
				return err
			}
			if since > 0 {
				if err := r.flushAndClear(p); err != nil {
					return err
				}
				since = 0
			}
			if !ok {
				if d, _ := r.dirty.counts(); d == 0 {
					return nil
				}
				cursor = 0
			}
			continue
		}
		run := r.runFrom(reg)
		cursor = run.last + 1
		select {
		case sem <- struct{}{}:
		case <-p.failc:
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := r.copyRun(p, run); err != nil {
				setErr(err)
			}
		}()
		since += run.count()
	}
}

// runFrom returns the run of regions one copy takes from dirty region
// reg: reg alone, or, when the local copy is unallocated there, the dirty
// regions that follow while they are unallocated too (one Unmap).
func (r *replica) runFrom(reg uint64) span {
	m := r.m
	rs := m.cfg.RegionSize
	off := int64(reg) * rs
	if off >= m.local.Size() {
		return span{reg, reg}
	}
	mapped, n, err := m.local.Mapping(m.ctx, off)
	if err != nil || mapped || n < 2*rs {
		return span{reg, reg}
	}
	last := reg
	for k := uint64(1); k < maxUnmapRun; k++ {
		if int64(reg+k+1)*rs > off+n || !r.dirty.isDirty(reg+k) {
			break
		}
		last = reg + k
	}
	return span{reg, last}
}

// copyRun copies the regions of run to the replica with the regions
// locked (no live write to them meanwhile). Once the replica acknowledged
// all, the regions are recorded copied.
func (r *replica) copyRun(p *peer, run span) error {
	m := r.m
	m.gate.RLock()
	defer m.gate.RUnlock()
	defer m.regions.lock(run, true)()
	sent, err := r.sendRegions(m.ctx, p, run)
	if err != nil {
		return err
	}
	if !p.ifHealthy(func() {
		for reg := run.first; reg <= run.last; reg++ {
			r.dirty.setCopied(reg)
		}
	}) {
		return fmt.Errorf("replica %s: resync stream failed", r.name)
	}
	r.mu.Lock()
	r.regionsCopied += int64(run.count())
	r.bytesCopied += sent
	r.mu.Unlock()
	return nil
}

// sendRegions sends the regions of run to p as the local copy holds them:
// allocated ranges read and written, unallocated ones unmapped (a thin
// copy stays thin). It returns, with the bytes written, once the replica
// acknowledged all. The caller keeps live writes away from run.
func (r *replica) sendRegions(ctx context.Context, p *peer, run span) (int64, error) {
	m := r.m
	rs := m.cfg.RegionSize
	start, end := int64(run.first)*rs, min(int64(run.last+1)*rs, m.local.Size())
	var (
		wg    sync.WaitGroup
		calls []*call
		buf   []byte
		sent  int64
	)
	defer func() {
		wg.Wait() // no call may still hold buf
		if buf != nil {
			m.bufs.put(buf)
		}
	}()
	send := func(c *call) error {
		c.wg = &wg
		if err := p.send(c); err != nil {
			return err
		}
		calls = append(calls, c)
		return nil
	}
	failed := func() error {
		for _, c := range calls {
			if c.err != nil {
				return c.err
			}
		}
		return nil
	}
	for off := start; off < end; {
		mapped, n, err := m.local.Mapping(ctx, off)
		if err != nil {
			return sent, fmt.Errorf("copy to replica %s: mapping at %d: %w", r.name, off, err)
		}
		if n <= 0 {
			return sent, fmt.Errorf("copy to replica %s: mapping at %d: empty extent", r.name, off)
		}
		n = min(n, end-off)
		if !mapped {
			if err := send(&call{kind: KindUnmap, off: off, length: n}); err != nil {
				return sent, err
			}
			off += n
			continue
		}
		if buf == nil {
			buf = m.bufs.get(int(rs))
		}
		for n > 0 {
			k := min(n, rs)
			wg.Wait() // the buffer's last write is acknowledged
			if err := failed(); err != nil {
				return sent, err
			}
			if err := m.local.ReadAt(ctx, buf[:k], off); err != nil {
				return sent, fmt.Errorf("copy to replica %s: reading %d bytes at %d: %w", r.name, k, off, err)
			}
			if err := send(&call{kind: KindWrite, off: off, data: buf[:k]}); err != nil {
				return sent, err
			}
			sent += k
			off += k
			n -= k
		}
	}
	wg.Wait()
	return sent, failed()
}

// flushAndClear makes the copied regions durable on the replica, then
// clears them from the DirtyLog.
func (r *replica) flushAndClear(p *peer) error {
	var wg sync.WaitGroup
	c := &call{kind: KindFlush, wg: &wg}
	if err := p.send(c); err != nil {
		return err
	}
	wg.Wait()
	if c.err != nil {
		return c.err
	}
	if err := r.dirty.clearCopied(); err != nil {
		return fmt.Errorf("clearing copied regions of replica %s: %w", r.name, err)
	}
	return nil
}

func (r *replica) status() ReplicaStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := ReplicaStatus{Name: r.name, RegionsCopied: r.regionsCopied, BytesCopied: r.bytesCopied}
	switch r.state {
	case stateSync:
		s.State = InSync
	case stateRejoining, stateResync:
		s.State = Resyncing
	default:
		s.State = OutOfSync
	}
	d, _ := r.dirty.counts()
	s.RegionsToCopy = r.regionsCopied + int64(d)
	if r.peer != nil {
		s.Outstanding = r.peer.outstanding()
	}
	if r.lastErr != nil && s.State != InSync {
		s.Err = r.lastErr.Error()
	}
	return s
}
