package scsi

import (
	"context"
	"sync"

	"tandem.io/tandem/volume/block"
)

// Ordering overlapping writes (issue 8).
//
// A logical unit orders the commands that change its blocks, once, for
// every device: WRITE, WRITE AND VERIFY, WRITE SAME (its unmap path too),
// UNMAP, COMPARE AND WRITE and the destination writes of EXTENDED COPY each
// hold the physical blocks (block.PhysicalBlockSize) they change while they
// call the device. So no two writes or unmaps touching the same physical
// block are ever in flight at once: a device may read-modify-write a block
// (the layers' copy-up of a partial write) without a lock of its own, and a
// mirror below the target sees overlapping writes one after the other and
// can apply them in that order on every copy. Claims that overlap are
// granted in arrival order — a claim waits for every earlier claim it
// overlaps, granted or still waiting — so a stream of small writes cannot
// starve a large one; claims that do not overlap never wait for each other.
//
// Reads take no part. SCSI gives a read that overlaps a write in flight no
// guarantee (commands with the SIMPLE task attribute may be processed in
// any order; an initiator that needs the new data waits for the write's
// status before it reads), and a read changes nothing, so it cannot lose a
// write.
//
// A command holds at most one claim at a time (UNMAP claims its
// descriptors one after the other, EXTENDED COPY one chunk's destination at
// a time), and holds it only around device calls, never while it waits for
// anything else; so claims cannot deadlock, with each other or with the
// reservation and mode locks, which are never held while a claim is taken.

// rangeLock is the queue of a logical unit's claims on its physical blocks.
type rangeLock struct {
	mu         sync.Mutex // protects head, tail, free, nfree and every queued claim's fields
	head, tail *claim     // claims in arrival order, granted and waiting
	free       *claim     // released claims kept for reuse (no allocation per I/O)
	nfree      int
}

// claim is one command's hold on the physical blocks [first, end).
type claim struct {
	first, end uint64
	// blockers counts the earlier queued claims that overlap this one;
	// the claim is granted when it reaches 0.
	blockers int
	// granted receives one token when a waiting claim's blockers reaches
	// 0 (capacity 1: the sender, holding mu, never blocks).
	granted    chan struct{}
	prev, next *claim
}

// maxFreeClaims bounds the claims kept for reuse; more than that many
// writes in flight at once allocate their claims.
const maxFreeClaims = 256

// lock claims the physical blocks under the n bytes at off and returns when
// every earlier claim overlapping them has been released, or with ctx's
// error when ctx ends first (nothing is then held). n <= 0 claims nothing
// (a nil claim, which unlock accepts).
func (l *rangeLock) lock(ctx context.Context, off, n int64) (*claim, error) {
	if n <= 0 {
		return nil, nil
	}
	first := uint64(off) / block.PhysicalBlockSize
	end := (uint64(off) + uint64(n) + block.PhysicalBlockSize - 1) / block.PhysicalBlockSize
	l.mu.Lock()
	c := l.free
	if c != nil {
		l.free, l.nfree = c.next, l.nfree-1
	} else {
		c = &claim{granted: make(chan struct{}, 1)}
	}
	c.first, c.end, c.blockers = first, end, 0
	for o := l.head; o != nil; o = o.next {
		if o.first < end && first < o.end {
			c.blockers++
		}
	}
	c.prev, c.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
	wait := c.blockers > 0
	l.mu.Unlock()
	if !wait {
		return c, nil
	}
	select {
	case <-c.granted:
		return c, nil
	case <-ctx.Done():
		// Leave the queue as if granted and released: the later claims
		// that counted this one stop waiting for it.
		l.unlock(c)
		return nil, ctx.Err()
	}
}

// tryLock claims the physical blocks under the n bytes at off if no
// queued claim overlaps them, and reports whether it did (nothing is held
// when it did not).
func (l *rangeLock) tryLock(off, n int64) (*claim, bool) {
	if n <= 0 {
		return nil, true
	}
	first := uint64(off) / block.PhysicalBlockSize
	end := (uint64(off) + uint64(n) + block.PhysicalBlockSize - 1) / block.PhysicalBlockSize
	l.mu.Lock()
	defer l.mu.Unlock()
	for o := l.head; o != nil; o = o.next {
		if o.first < end && first < o.end {
			return nil, false
		}
	}
	c := l.free
	if c != nil {
		l.free, l.nfree = c.next, l.nfree-1
	} else {
		c = &claim{granted: make(chan struct{}, 1)}
	}
	c.first, c.end, c.blockers = first, end, 0
	c.prev, c.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
	return c, true
}

// unlock releases a claim: the later claims that overlap it and wait for
// nothing else are granted. c must not be used afterwards.
func (l *rangeLock) unlock(c *claim) {
	if c == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for o := c.next; o != nil; o = o.next {
		if o.first < c.end && c.first < o.end {
			if o.blockers--; o.blockers == 0 {
				o.granted <- struct{}{}
			}
		}
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	select {
	case <-c.granted: // granted while its waiter gave up (ctx ended)
	default:
	}
	if l.nfree < maxFreeClaims {
		c.prev, c.next = nil, l.free
		l.free = c
		l.nfree++
	}
}

// hold claims the physical blocks under the n bytes at off for a command
// that changes them (see above); the caller releases them with
// lu.ranges.unlock once its device calls have returned.
func (lu *LogicalUnit) hold(ctx context.Context, off, n int64) (*claim, *SenseError) {
	c, err := lu.ranges.lock(ctx, off, n)
	if err != nil {
		return nil, deviceError(ctx, err, true)
	}
	return c, nil
}
