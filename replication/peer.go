package replication

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"tandem.io/tandem/volume/block"
)

// call is one request to a replica and, once its WaitGroup is done, its
// outcome: reply if err is nil; otherwise the peer failed, and the caller
// waits for peer.done and reads peer.handled.
type call struct {
	kind   Kind
	off    int64
	length int64 // Unmap, Checksums
	region int64 // Checksums
	fua    bool
	data   []byte // Write data or Barrier op; not retained after the call completes

	wg *sync.WaitGroup

	id    uint64
	sent  time.Time // when queued, for the timeout
	reply Reply
	err   error
}

// misses returns the regions the replica may miss if the call fails, and
// whether it may miss anything (a barrier: the whole copy).
func (c *call) misses(regionSize int64) (span, bool, bool) {
	switch c.kind {
	case KindWrite:
		return spanOf(c.off, int64(len(c.data)), regionSize), true, false
	case KindUnmap:
		return spanOf(c.off, c.length, regionSize), true, false
	case KindBarrier:
		return span{}, false, true
	}
	return span{}, false, false
}

// peerFailure is what a peer hands its owner when it fails: the error and
// every region the replica may miss because of it (requests not
// acknowledged, and those acknowledged since its last completed flush: a
// replica that lost power loses them).
type peerFailure struct {
	err  error
	lost spanSet
	all  bool // the replica may miss anything (a barrier failed)
}

// peer is one pipelined connection to a replica for one volume stream:
// many requests in flight, a writer goroutine that batches them and sends
// whenever it has something (so requests that arrive while it writes go
// together in the next write), and a reader that matches replies to
// requests by ID.
//
// When it fails (connection error, a reply that is not OK, a request
// unanswered for longer than timeout — barrierTimeout for a barrier,
// which may take long on the replica: a snapshot), it closes the
// connection, waits
// for its goroutines to stop (so no buffer of a request is touched any
// more), calls onFail with the regions the replica may miss, and only then
// completes the calls still outstanding. onFail's result is kept in
// handled: nil means the failure is taken care of (marked and, for an
// in-sync replica, dropped) and the writes may complete.
type peer struct {
	name, volumeID string
	epoch          uint64
	conn           net.Conn
	timeout        time.Duration
	barrierTimeout time.Duration
	regionSize     int64
	log            *slog.Logger
	onFail         func(*peer, peerFailure) error

	failc   chan struct{} // closed on the first failure
	done    chan struct{} // closed when handled is set and every call completed
	handled error
	wake    chan struct{}
	wg      sync.WaitGroup // reader and writer

	mu        sync.Mutex // protects the fields below
	err       error
	nextID    uint64
	queue     []*call          // for the writer
	pending   map[uint64]*call // sent or queued, not answered
	unflushed spanSet          // acknowledged since the last flush was sent
	flushing  map[uint64]spanSet
}

func newPeer(conn net.Conn, name, volumeID string, epoch uint64, timeout, barrierTimeout time.Duration, regionSize int64,
	log *slog.Logger, onFail func(*peer, peerFailure) error) *peer {
	return &peer{name: name, volumeID: volumeID, epoch: epoch, conn: conn, timeout: timeout, barrierTimeout: barrierTimeout,
		regionSize: regionSize, log: log, onFail: onFail,
		failc: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}, 1),
		pending: map[uint64]*call{}, flushing: map[uint64]spanSet{}}
}

// send queues c. It adds one to c.wg, done when c completes; it fails (and
// adds nothing) if the peer already failed.
func (p *peer) send(c *call) error {
	p.mu.Lock()
	if p.err != nil {
		err := p.err
		p.mu.Unlock()
		return err
	}
	p.nextID++
	c.id = p.nextID
	c.sent = time.Now()
	c.wg.Add(1)
	p.pending[c.id] = c
	p.queue = append(p.queue, c)
	if c.kind == KindFlush {
		p.flushing[c.id] = p.unflushed
		p.unflushed = spanSet{}
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// fail stops the peer with err (the first error wins).
func (p *peer) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
		close(p.failc)
	}
}

func (p *peer) failed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err != nil
}

// ifHealthy runs fn unless the peer failed; a failure waits for fn. The
// resync uses it to record a region as copied only if the failure
// handling, which marks what the replica may miss, comes after.
func (p *peer) ifHealthy(fn func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return false
	}
	fn()
	return true
}

// waitedFor is how long the oldest request not yet answered has waited
// at now (0 if none).
func (p *peer) waitedFor(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var d time.Duration
	for _, c := range p.pending {
		d = max(d, now.Sub(c.sent))
	}
	return d
}

// outstanding is the number of requests not yet answered.
func (p *peer) outstanding() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// run drives the peer until it fails; the owner tracks it.
func (p *peer) run() {
	p.wg.Add(2)
	go p.readLoop()
	go p.writeLoop()
	tick := time.NewTicker(max(min(p.timeout, p.barrierTimeout)/4, time.Millisecond))
loop:
	for {
		select {
		case <-p.failc:
			break loop
		case now := <-tick.C:
			if c, d := p.overdue(now); c != nil {
				p.fail(fmt.Errorf("replica %s: %v request unanswered for %v: %w", p.name, c.kind, d.Round(time.Millisecond), ErrTimeout))
			}
		}
	}
	tick.Stop()
	p.conn.Close()
	p.wg.Wait()

	p.mu.Lock()
	f := peerFailure{err: p.err}
	calls := make([]*call, 0, len(p.pending))
	for _, c := range p.pending {
		calls = append(calls, c)
		if sp, ok, all := c.misses(p.regionSize); ok {
			f.lost.add(sp)
		} else if all {
			f.all = true
		}
	}
	f.lost.addAll(p.unflushed)
	for _, s := range p.flushing {
		f.lost.addAll(s)
	}
	p.pending, p.queue, p.flushing, p.unflushed = nil, nil, nil, spanSet{}
	p.mu.Unlock()

	p.handled = p.onFail(p, f)
	for _, c := range calls {
		c.err = f.err
		c.wg.Done()
	}
	close(p.done)
}

// overdue returns a request unanswered for longer than its timeout, and
// for how long, if there is one.
func (p *peer) overdue(now time.Time) (*call, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.pending {
		limit := p.timeout
		if c.kind == KindBarrier {
			limit = p.barrierTimeout
		}
		if d := now.Sub(c.sent); d > limit {
			return c, d
		}
	}
	return nil, 0
}

// inlineData is the size up to which a write's data is copied into the
// batch buffer; larger data goes out from the caller's buffer.
const inlineData = 16 << 10

func (p *peer) writeLoop() {
	defer p.wg.Done()
	var batch, spare []*call
	var buf []byte
	type piece struct {
		from, to int    // in buf
		data     []byte // or this
	}
	var pieces []piece
	var vec net.Buffers
	for {
		select {
		case <-p.wake:
		case <-p.failc:
			return
		}
		for {
			// Let the requests being issued right now join this batch:
			// one write system call for many saves more than the wait.
			runtime.Gosched()
			p.mu.Lock()
			batch, p.queue = p.queue, spare[:0]
			p.mu.Unlock()
			if len(batch) == 0 {
				spare = batch
				break
			}
			buf, pieces = buf[:0], pieces[:0]
			from := 0
			for _, c := range batch {
				buf = p.appendRequest(buf, c)
				if (c.kind == KindWrite || c.kind == KindBarrier) && len(c.data) > inlineData {
					pieces = append(pieces, piece{from: from, to: len(buf)}, piece{data: c.data})
					from = len(buf)
				} else if c.kind == KindWrite || c.kind == KindBarrier {
					buf = append(buf, c.data...)
				}
			}
			pieces = append(pieces, piece{from: from, to: len(buf)})
			vec = vec[:0]
			for _, pc := range pieces {
				if pc.data != nil {
					vec = append(vec, pc.data)
				} else if pc.to > pc.from {
					vec = append(vec, buf[pc.from:pc.to])
				}
			}
			if _, err := vec.WriteTo(p.conn); err != nil {
				p.fail(fmt.Errorf("replica %s: sending: %w", p.name, err))
				return
			}
			clear(batch)
			spare = batch
		}
	}
}

// appendRequest appends c's header and volume ID (not its payload).
func (p *peer) appendRequest(b []byte, c *call) []byte {
	switch c.kind {
	case KindHello:
		return (&Hello{ID: c.id, VolumeID: p.volumeID, Epoch: p.epoch}).AppendMarshal(b)
	case KindWrite:
		return (&Write{ID: c.id, VolumeID: p.volumeID, Epoch: p.epoch, Off: uint64(c.off), FUA: c.fua, Data: c.data}).AppendHeader(b)
	case KindUnmap:
		return (&Unmap{ID: c.id, VolumeID: p.volumeID, Epoch: p.epoch, Off: uint64(c.off), Len: uint64(c.length)}).AppendMarshal(b)
	case KindFlush:
		return (&Flush{ID: c.id, VolumeID: p.volumeID, Epoch: p.epoch}).AppendMarshal(b)
	case KindBarrier:
		h := (&Barrier{ID: c.id, VolumeID: p.volumeID, Epoch: p.epoch, Op: c.data}).header()
		return append(h.appendTo(b), p.volumeID...)
	case KindChecksums:
		return (&Checksums{ID: c.id, VolumeID: p.volumeID, Epoch: p.epoch, Off: uint64(c.off),
			Len: uint64(c.length), RegionSize: uint64(c.region)}).AppendMarshal(b)
	}
	panic(fmt.Sprintf("replication: cannot send %v", c.kind))
}

func (p *peer) readLoop() {
	defer p.wg.Done()
	mr := messageReader{r: bufio.NewReaderSize(p.conn, 64<<10)}
	for {
		m, err := mr.read()
		if err != nil {
			if errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLong) {
				err = fmt.Errorf("%w: %w", ErrProtocol, err)
			}
			p.fail(fmt.Errorf("replica %s: receiving: %w", p.name, err))
			return
		}
		r, ok := m.(*Reply)
		if !ok {
			p.fail(fmt.Errorf("replica %s: %w: sent a %v", p.name, ErrProtocol, m.header().Kind))
			return
		}
		p.mu.Lock()
		c := p.pending[r.ID]
		if c == nil || r.Status != StatusOK {
			p.mu.Unlock()
			switch {
			case c == nil:
				err = fmt.Errorf("replica %s: %w: reply to unknown request %d", p.name, ErrProtocol, r.ID)
			case r.Status == StatusStaleEpoch:
				err = fmt.Errorf("volume %s epoch %d: replica %s accepted epoch %d: %w (%w)",
					p.volumeID, p.epoch, p.name, r.Epoch, ErrDeposed, block.ErrClosed)
			default:
				err = fmt.Errorf("volume %s: %v: %w", p.volumeID, c.kind, &StatusError{Replica: p.name, Status: r.Status, Message: r.Message})
			}
			p.fail(err)
			return
		}
		delete(p.pending, r.ID)
		switch {
		case c.kind == KindWrite && !c.fua, c.kind == KindUnmap:
			sp, _, _ := c.misses(p.regionSize)
			p.unflushed.add(sp)
		case c.kind == KindFlush:
			delete(p.flushing, c.id)
		}
		p.mu.Unlock()
		c.reply = *r
		c.wg.Done()
	}
}
