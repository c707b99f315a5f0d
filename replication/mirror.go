package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tandem.io/tandem/volume/block"
)

// MirrorConfig configures a Mirror: one volume's primary at one epoch.
type MirrorConfig struct {
	VolumeID string
	Epoch    uint64
	Self     string // this node, for logs; never a replica
	Local    Copy

	// InSync are the replicas whose copies are identical now (the catalog's
	// in-sync set, without Self). OutOfSync must be resynced from the
	// DirtyLog. FullRebuild have no valid dirty map: every region is
	// dirty (the resync skips data where Local is unallocated and unmaps
	// it on the replica instead).
	InSync      []string
	OutOfSync   []string
	FullRebuild []string

	Dialer Dialer
	Dirty  DirtyLog
	// RegionSize is the dirty-map granularity, a multiple of 4 KiB and at
	// most MaxWriteData (default 1 MiB). It must stay the same for a
	// volume across Mirrors: the DirtyLog stores region numbers.
	RegionSize int64

	// Drop commits, through consensus, "replica out of the in-sync set"
	// (checked: same epoch, requester is the primary). An error means it
	// is not committed and will not be. Rejoin commits "replica back in
	// sync". The Mirror never runs the two concurrently for one replica.
	Drop   func(ctx context.Context, replica string) error
	Rejoin func(ctx context.Context, replica string) error

	// ReplicaTimeout: a replica that does not answer a request within it
	// is dropped (default 5s). BarrierTimeout replaces it for Barrier
	// requests, which may take long on a replica (a snapshot; default
	// 60s). DropTimeout bounds each Drop and Rejoin call (default 10s).
	ReplicaTimeout time.Duration
	BarrierTimeout time.Duration
	DropTimeout    time.Duration

	// ActiveRegions bounds the activity log (default 1024): the regions
	// recorded, before any copy changes, as possibly having writes in
	// flight, so that after a crash they are made identical on every copy.
	// A write to a region not in it costs a (group-committed) Mark; when
	// it is full, a write to a new region waits until idle regions are
	// flushed out of it. Writes spanning more than a quarter of it are
	// split. ActiveIdle: regions idle this long leave it in the background
	// (default 2s).
	ActiveRegions int
	ActiveIdle    time.Duration

	// Lease, when set, is awaited before every I/O (not Verify or Close).
	Lease Lease

	Logger *slog.Logger
}

// Mirror is a volume's primary: a block.Device that writes the local copy
// and every in-sync replica, and reads the local copy.
//
// A write completes when the local copy and every in-sync replica have it.
// A replica that fails is dropped before the writes it missed complete:
// first the regions it may miss are persisted in the DirtyLog, then Drop
// commits it out of the in-sync set; if Drop fails, the writes fail (a
// primary that cannot reach the majority stops acknowledging). A replica
// that answers StaleEpoch deposes the Mirror: that write and every later
// I/O fail with ErrDeposed; a replica is never dropped for it.
//
// Out-of-sync replicas are resynced in the background, one goroutine each:
// dirty regions are copied while live writes are mirrored to the replica
// too, then Rejoin puts it back in the in-sync set.
//
// Mirror implements block.Device, block.Unmapper, block.Mapper and
// block.Sender (sendfile when Local is a block.Sender, a buffered copy
// otherwise).
type Mirror struct {
	cfg   MirrorConfig
	local Copy
	log   *slog.Logger
	bufs  bufferPool

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Mirror started
	goMu   sync.Mutex     // protects stopped
	// stopped is set by Close before it waits: no goroutine starts after.
	stopped bool

	// gate is held shared by every write, unmap, flush, region copy and
	// verify step, exclusively by a barrier and by the resync's switches
	// between states (which need no write in flight that saw the old one).
	gate sync.RWMutex
	// regionLocking > 0 while a resync or verify runs: writes then take
	// their regions shared in regions. Raised only with gate held.
	regionLocking atomic.Int32
	regions       regionLocks

	// replicas is the replica set: an immutable slice, replaced (never
	// changed) with gate held exclusively, so that an I/O holding gate
	// sees one set throughout. Read it with set().
	replicas atomic.Pointer[[]*replica]
	// setMu serializes AddReplica, RemoveReplica and Close's start.
	setMu sync.Mutex

	act *activity

	deposed   atomic.Pointer[error]
	closing   atomic.Bool
	closeOnce sync.Once
}

var (
	_ block.Device   = (*Mirror)(nil)
	_ block.Unmapper = (*Mirror)(nil)
	_ block.Mapper   = (*Mirror)(nil)
	_ block.Sender   = (*Mirror)(nil)
)

// NewMirror starts a Mirror: it loads the replicas' dirty maps, opens a
// stream to every in-sync replica (Hello at cfg.Epoch, which fences every
// older primary at that replica), repairs the regions a crash left in the
// activity log and starts the resyncs. An in-sync replica that cannot be
// reached, answers with another size, or has regions in the DirtyLog (a
// drop this node began and did not finish) is dropped like one that
// fails. A replica answering StaleEpoch fails NewMirror with ErrDeposed.
//
// The repair: each region left in the activity log (writes were in flight
// when the primary stopped without Close: they may have reached some
// copies and not others) is copied from the local copy — the reference:
// unflushed writes were never promised durable — to every connected
// in-sync replica, which is then flushed; every other replica gets the
// regions marked dirty; then they leave the log. ctx bounds it.
func NewMirror(ctx context.Context, cfg MirrorConfig) (*Mirror, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("volume", cfg.VolumeID, "epoch", cfg.Epoch)
	mctx, cancel := context.WithCancel(context.Background())
	m := &Mirror{cfg: cfg, local: cfg.Local, log: log, ctx: mctx, cancel: cancel}
	m.act = newActivity(m)
	var set []*replica
	add := func(name string, st replicaState) (*replica, error) {
		r := newReplica(m, name, st)
		if err := r.dirty.load(); err != nil {
			return nil, fmt.Errorf("volume %s: reading the dirty map of replica %s: %w", cfg.VolumeID, name, err)
		}
		set = append(set, r)
		return r, nil
	}
	var connect []*replica
	for _, name := range cfg.InSync {
		r, err := add(name, stateSync)
		if err != nil {
			cancel()
			return nil, err
		}
		if d, c := r.dirty.counts(); d+c > 0 {
			log.Warn("replication: in-sync replica has dirty regions; dropping it to resync them", "replica", name, "regions", d+c)
			r.state = stateDropping
			continue
		}
		connect = append(connect, r)
	}
	for _, name := range cfg.OutOfSync {
		if _, err := add(name, stateOut); err != nil {
			cancel()
			return nil, err
		}
	}
	for _, name := range cfg.FullRebuild {
		r, err := add(name, stateOut)
		if err != nil {
			cancel()
			return nil, err
		}
		if err := r.markAll(); err != nil {
			cancel()
			return nil, fmt.Errorf("volume %s: marking replica %s for a full rebuild: %w", cfg.VolumeID, name, err)
		}
	}

	m.replicas.Store(&set)

	var wg sync.WaitGroup
	for _, r := range connect {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := m.connect(ctx, r)
			r.mu.Lock()
			defer r.mu.Unlock()
			if err != nil {
				log.Warn("replication: in-sync replica unreachable at start; dropping it", "replica", r.name, "err", err)
				r.state = stateDropping
				return
			}
			r.peer = p
		}()
	}
	wg.Wait()
	if err := m.usable(); err != nil {
		m.Close()
		return nil, err
	}
	if err := m.act.repair(ctx); err != nil {
		m.Close()
		if d := m.deposed.Load(); d != nil {
			return nil, *d
		}
		return nil, fmt.Errorf("volume %s: repairing the regions left in the activity log: %w", cfg.VolumeID, err)
	}
	if err := m.usable(); err != nil {
		m.Close()
		return nil, err
	}
	for _, r := range m.set() {
		r.spawn(r.loop)
	}
	m.spawn(m.act.run)
	return m, nil
}

// set returns the current replica set (do not modify it).
func (m *Mirror) set() []*replica { return *m.replicas.Load() }

// spawn runs fn in a goroutine Close waits for; false if closed.
func (m *Mirror) spawn(fn func()) bool {
	m.goMu.Lock()
	defer m.goMu.Unlock()
	if m.stopped {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		fn()
	}()
	return true
}

func (cfg *MirrorConfig) check() error {
	if cfg.VolumeID == "" || len(cfg.VolumeID) > MaxVolumeIDLen {
		return fmt.Errorf("replication: volume ID %q: empty or longer than %d", cfg.VolumeID, MaxVolumeIDLen)
	}
	if cfg.Local == nil || cfg.Dialer == nil || cfg.Dirty == nil || cfg.Drop == nil || cfg.Rejoin == nil {
		return errors.New("replication: mirror needs Local, Dialer, Dirty, Drop and Rejoin")
	}
	if cfg.RegionSize == 0 {
		cfg.RegionSize = 1 << 20
	}
	if cfg.RegionSize%block.PhysicalBlockSize != 0 || cfg.RegionSize <= 0 || cfg.RegionSize > MaxWriteData {
		return fmt.Errorf("replication: region size %d: not a multiple of %d up to %d", cfg.RegionSize, block.PhysicalBlockSize, MaxWriteData)
	}
	if cfg.ReplicaTimeout <= 0 {
		cfg.ReplicaTimeout = 5 * time.Second
	}
	if cfg.BarrierTimeout <= 0 {
		cfg.BarrierTimeout = 60 * time.Second
	}
	if cfg.DropTimeout <= 0 {
		cfg.DropTimeout = 10 * time.Second
	}
	if cfg.ActiveRegions <= 0 {
		cfg.ActiveRegions = 1024
	}
	if cfg.ActiveIdle <= 0 {
		cfg.ActiveIdle = 2 * time.Second
	}
	seen := map[string]bool{cfg.Self: true}
	for _, n := range slices.Concat(cfg.InSync, cfg.OutOfSync, cfg.FullRebuild) {
		if n == "" || seen[n] || strings.Contains(n, "@") {
			return fmt.Errorf("replication: replica %q: empty, Self, listed twice, or with an @", n)
		}
		seen[n] = true
	}
	return nil
}

// connect opens a stream to r and checks the replica's size.
func (m *Mirror) connect(ctx context.Context, r *replica) (*peer, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ReplicaTimeout)
	defer cancel()
	conn, err := m.cfg.Dialer.Dial(ctx, r.name)
	if err != nil {
		return nil, fmt.Errorf("dialing replica %s: %w", r.name, err)
	}
	p := newPeer(conn, r.name, m.cfg.VolumeID, m.cfg.Epoch, m.cfg.ReplicaTimeout, m.cfg.BarrierTimeout, m.cfg.RegionSize, m.log, r.peerFailed)
	if !r.spawn(p.run) {
		conn.Close()
		return nil, fmt.Errorf("volume %s: %w", m.cfg.VolumeID, block.ErrClosed)
	}
	var wg sync.WaitGroup
	c := &call{kind: KindHello, wg: &wg}
	if err := p.send(c); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { p.fail(fmt.Errorf("replica %s: hello: %w", r.name, context.Cause(ctx))) })
	wg.Wait()
	stop()
	if c.err != nil {
		return nil, c.err
	}
	if size := m.local.Size(); c.reply.Size != uint64(size) {
		err := fmt.Errorf("replica %s: copy of %d bytes, local copy %d", r.name, c.reply.Size, size)
		p.fail(err)
		return nil, err
	}
	return p, nil
}

// usable says why the Mirror must not serve I/O, nil if it may.
func (m *Mirror) usable() error {
	if p := m.deposed.Load(); p != nil {
		return *p
	}
	if m.closing.Load() {
		return fmt.Errorf("volume %s: %w", m.cfg.VolumeID, block.ErrClosed)
	}
	return nil
}

// depose fails the Mirror for good: a replica accepted a newer epoch.
func (m *Mirror) depose(err error) {
	if m.deposed.CompareAndSwap(nil, &err) {
		m.log.Warn("replication: deposed", "err", err)
		m.act.wakeAll()
		set := m.set()
		for _, r := range set {
			r.mu.Lock()
			p := r.peer
			r.mu.Unlock()
			if p != nil {
				p.fail(err)
			}
		}
		for _, r := range set {
			r.kickLoop()
		}
	}
}

// ready waits for the lease, then says why the Mirror must not serve I/O
// (nil if it may).
func (m *Mirror) ready(ctx context.Context) error {
	if err := m.usable(); err != nil {
		return err
	}
	if m.cfg.Lease != nil {
		if err := m.cfg.Lease.Await(ctx); err != nil {
			return fmt.Errorf("volume %s: waiting for the lease: %w", m.cfg.VolumeID, err)
		}
		return m.usable()
	}
	return nil
}

// Size is the local copy's size.
func (m *Mirror) Size() int64 { return m.local.Size() }

// ReadAt reads the local copy.
func (m *Mirror) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	return m.local.ReadAt(ctx, p, off)
}

// Mapping reports the local copy's allocation.
func (m *Mirror) Mapping(ctx context.Context, off int64) (bool, int64, error) {
	if err := m.ready(ctx); err != nil {
		return false, 0, err
	}
	return m.local.Mapping(ctx, off)
}

// SendTo sends n bytes at off from the local copy: with sendfile if it is
// a block.Sender, else through a buffer (dst must then be an io.Writer).
func (m *Mirror) SendTo(ctx context.Context, dst syscall.Conn, off, n int64) (int64, error) {
	if err := m.ready(ctx); err != nil {
		return 0, err
	}
	if s, ok := m.local.(block.Sender); ok {
		return s.SendTo(ctx, dst, off, n)
	}
	w, ok := dst.(io.Writer)
	if !ok {
		return 0, fmt.Errorf("replication: SendTo a %T, not a writer", dst)
	}
	buf := m.bufs.get(int(min(n, 1<<20)))
	defer m.bufs.put(buf)
	var sent int64
	for sent < n {
		p := buf[:min(int64(len(buf)), n-sent)]
		if err := m.local.ReadAt(ctx, p, off+sent); err != nil {
			return sent, err
		}
		k, err := w.Write(p)
		sent += int64(k)
		if err != nil {
			return sent, fmt.Errorf("replication: sending %d bytes at %d: %w", n, off, err)
		}
	}
	return sent, nil
}

// WriteAt writes the local copy and every in-sync replica.
func (m *Mirror) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if len(p) == 0 {
		return m.local.WriteAt(ctx, p, off, fua)
	}
	return m.mutate(ctx, KindWrite, p, off, int64(len(p)), fua)
}

// Unmap unmaps the range on the local copy and every in-sync replica.
func (m *Mirror) Unmap(ctx context.Context, off, length int64) error {
	if length <= 0 {
		return m.local.Unmap(ctx, off, length)
	}
	return m.mutate(ctx, KindUnmap, nil, off, length, false)
}

// action is what one I/O does with one replica.
type action struct {
	r          *replica
	p          *peer
	calls      []*call
	sendFailed bool // p had failed: wait for its failure handling
	mark       bool // persist the regions dirty before the local write
	awaitDrop  bool // wait until the replica is out of the in-sync set
}

// mutate runs a write or an unmap (p nil) on every copy, in pieces that
// each fit in the activity log.
func (m *Mirror) mutate(ctx context.Context, kind Kind, p []byte, off, n int64, fua bool) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	if size := m.local.Size(); off < 0 || off > size || n > size-off {
		// Never sent: a replica answering out of range would be dropped.
		return fmt.Errorf("volume %s: %d bytes at %d of %d: %w", m.cfg.VolumeID, n, off, size, block.ErrOutOfRange)
	}
	rs := m.cfg.RegionSize
	for from, end := off, off+n; from < end; {
		to := min(end, (from/rs+int64(m.act.maxSpan()))*rs)
		var q []byte
		if p != nil {
			q = p[from-off : to-off]
		}
		if err := m.mutatePiece(ctx, kind, q, from, to-from, fua); err != nil {
			return err
		}
		from = to
	}
	return nil
}

// mutatePiece runs one piece of a mutation, its regions in the activity
// log while it is in flight. A Mirror without replicas has no copies to
// keep in agreement and skips the log; a piece that started so and finds
// a replica once it holds the gate starts over.
func (m *Mirror) mutatePiece(ctx context.Context, kind Kind, p []byte, off, n int64, fua bool) error {
	sp := spanOf(off, n, m.cfg.RegionSize)
	for {
		tracked := len(m.set()) > 0
		if tracked {
			if err := m.act.begin(ctx, sp); err != nil {
				return err
			}
		}
		again, err := m.mutateGated(ctx, kind, p, off, n, fua, sp, tracked)
		if tracked {
			m.act.end(sp)
		}
		if !again {
			return err
		}
	}
}

// mutateGated runs a piece with the gate held shared; again if it must
// start over in the activity log.
func (m *Mirror) mutateGated(ctx context.Context, kind Kind, p []byte, off, n int64, fua bool, sp span, tracked bool) (again bool, _ error) {
	m.gate.RLock()
	defer m.gate.RUnlock()
	if err := m.usable(); err != nil {
		return false, err
	}
	set := m.set()
	if !tracked && len(set) > 0 {
		return true, nil
	}
	if m.regionLocking.Load() > 0 {
		defer m.regions.lock(sp, false)()
	}
	acts := make([]action, len(set))
	for i, r := range set {
		acts[i] = r.plan(sp)
	}
	// A replica that will not get the write has its regions durably dirty
	// before any copy changes: a crash after the local write cannot leave
	// a difference the DirtyLog does not know.
	for i := range acts {
		if a := &acts[i]; a.mark {
			if err := a.r.dirty.mark(sp); err != nil {
				return false, fmt.Errorf("volume %s: marking %d bytes at %d dirty for replica %s: %w (%w)",
					m.cfg.VolumeID, n, off, a.r.name, block.ErrMedium, err)
			}
		}
	}
	var wg sync.WaitGroup
	var markErr error
	for i := range acts {
		a := &acts[i]
		if a.p == nil {
			continue
		}
		var err error
		a.calls, err = m.sendMutation(a.p, &wg, kind, p, off, n, fua)
		if err != nil {
			// The peer failed just now: it will not get the write, and
			// its failure handling does not know of it.
			if err := a.r.markLost(sp); err != nil {
				markErr = err
			}
			a.sendFailed = true
		}
	}
	var err error
	if kind == KindWrite {
		err = m.local.WriteAt(ctx, p, off, fua)
	} else {
		err = m.local.Unmap(ctx, off, n)
	}
	wg.Wait()
	if rerr := m.settle(acts); err == nil {
		err = rerr
	}
	if err == nil && markErr != nil {
		err = fmt.Errorf("volume %s: %w: %w", m.cfg.VolumeID, block.ErrMedium, markErr)
	}
	if d := m.deposed.Load(); d != nil {
		return false, *d
	}
	return false, err
}

// sendMutation sends a write (split at MaxWriteData) or an unmap to p. An
// error means the peer failed before all of it was sent; the calls that
// were are returned and must be waited for all the same.
func (m *Mirror) sendMutation(p *peer, wg *sync.WaitGroup, kind Kind, data []byte, off, n int64, fua bool) ([]*call, error) {
	if kind == KindUnmap {
		c := &call{kind: KindUnmap, off: off, length: n, wg: wg}
		if err := p.send(c); err != nil {
			return nil, err
		}
		return []*call{c}, nil
	}
	calls := make([]*call, 0, (len(data)+MaxWriteData-1)/MaxWriteData)
	for o := 0; o < len(data); o += MaxWriteData {
		c := &call{kind: KindWrite, off: off + int64(o), data: data[o:min(len(data), o+MaxWriteData)], fua: fua, wg: wg}
		if err := p.send(c); err != nil {
			return calls, err
		}
		calls = append(calls, c)
	}
	return calls, nil
}

// settle waits for every replica's part of an I/O to be resolved and
// returns the error the initiator must see, nil if none.
func (m *Mirror) settle(acts []action) error {
	var errs []error
	for i := range acts {
		a := &acts[i]
		failed := a.sendFailed
		for _, c := range a.calls {
			failed = failed || c.err != nil
		}
		if failed {
			<-a.p.done
			if a.p.handled != nil {
				errs = append(errs, a.p.handled)
			}
		}
		if a.awaitDrop {
			if err := a.r.awaitDrop(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

// Flush makes every completed write durable on the local copy and every
// in-sync replica.
func (m *Mirror) Flush(ctx context.Context) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	m.gate.RLock()
	defer m.gate.RUnlock()
	if err := m.usable(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	set := m.set()
	acts := make([]action, len(set))
	for i, r := range set {
		a := &acts[i]
		a.r = r
		r.mu.Lock()
		switch r.state {
		case stateSync, stateRejoining, stateResync:
			a.p = r.peer
		case stateDropping:
			a.awaitDrop = true
		}
		r.mu.Unlock()
		if a.p != nil {
			c := &call{kind: KindFlush, wg: &wg}
			if err := a.p.send(c); err != nil {
				a.sendFailed = true
				continue
			}
			a.calls = []*call{c}
		}
	}
	err := m.local.Flush(ctx)
	wg.Wait()
	if rerr := m.settle(acts); err == nil {
		err = rerr
	}
	if d := m.deposed.Load(); d != nil {
		return *d
	}
	return err
}

// Barrier applies an operation (snapshot, resize, revert...) in the write
// stream: it waits for the writes in flight and holds new ones, runs local
// (the operation on the local copy), sends op to every in-sync replica
// (Copies.Barrier there) and waits for all, then lets writes go on. A
// replica that fails it, or does not answer within BarrierTimeout, is
// dropped like one that fails a write (the whole copy dirty: it may or
// may not have applied op). Replicas out of sync
// miss the operation: they are marked for a full rebuild; their copy
// still lacks op (a snapshot they do not have, a size they do not have)
// and the caller must put that right (recreate the copy) before they can
// rejoin with the same history. If local fails, nothing is sent. An error
// after local ran leaves the local copy with op applied.
func (m *Mirror) Barrier(ctx context.Context, op []byte, local func() error) error {
	if len(op) == 0 || len(op) > MaxOpLen {
		return fmt.Errorf("replication: barrier operation of %d bytes (1..%d)", len(op), MaxOpLen)
	}
	if err := m.ready(ctx); err != nil {
		return err
	}
	m.gate.Lock()
	defer m.gate.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	set := m.set()
	for _, r := range set {
		if err := r.awaitDrop(); err != nil {
			return err
		}
	}
	if err := local(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	acts := make([]action, len(set))
	var errs []error
	for i, r := range set {
		a := &acts[i]
		a.r = r
		r.mu.Lock()
		st, p := r.state, r.peer
		r.mu.Unlock()
		switch st {
		case stateRemoved:
			// Being removed: it misses op, and that does not matter.
			continue
		case stateSync, stateRejoining:
			c := &call{kind: KindBarrier, data: op, wg: &wg}
			a.p = p
			if err := p.send(c); err == nil {
				a.calls = []*call{c}
				continue
			}
			// The peer failed just now: it misses op, as below, and the
			// barrier waits for its drop.
			a.sendFailed = true
		case stateDropping:
			// It failed since the drops were settled above.
			a.awaitDrop = true
		}
		// Out of sync: it misses op.
		if err := r.markAll(); err != nil {
			r.mu.Lock()
			r.lostAll = true
			r.mu.Unlock()
			errs = append(errs, fmt.Errorf("volume %s: marking replica %s for a full rebuild: %w (%w)", m.cfg.VolumeID, r.name, block.ErrMedium, err))
		}
	}
	wg.Wait()
	if err := m.settle(acts); err != nil {
		errs = append(errs, err)
	}
	if d := m.deposed.Load(); d != nil {
		return *d
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// Difference is a region where a replica's copy differs from the local one.
type Difference struct {
	Replica string
	Offset  int64
	Length  int64
}

// verifyRegions is how many regions Verify compares at once (and holds
// writes back from).
const verifyRegions = 16

// Verify compares the SHA-256 of every region of the local copy with each
// in-sync replica's. Writes go on meanwhile: only those to the regions
// being compared wait. A replica that fails is dropped as usual; Verify
// then returns, with the differences found, an error naming it.
func (m *Mirror) Verify(ctx context.Context) ([]Difference, error) {
	if err := m.usable(); err != nil {
		return nil, err
	}
	m.gate.Lock()
	m.regionLocking.Add(1)
	m.gate.Unlock()
	defer m.regionLocking.Add(-1)
	rs := m.cfg.RegionSize
	var diffs []Difference
	var errs []error
	failed := map[*replica]bool{}
	for off := int64(0); off < m.local.Size(); off += verifyRegions * rs {
		if err := ctx.Err(); err != nil {
			return diffs, err
		}
		if err := m.usable(); err != nil {
			return diffs, err
		}
		d, err := m.verifyStep(ctx, off, failed)
		diffs = append(diffs, d...)
		errs = append(errs, err...)
	}
	return diffs, errors.Join(errs...)
}

func (m *Mirror) verifyStep(ctx context.Context, off int64, failed map[*replica]bool) ([]Difference, []error) {
	rs := m.cfg.RegionSize
	m.gate.RLock()
	defer m.gate.RUnlock()
	n := min(verifyRegions*rs, m.local.Size()-off)
	defer m.regions.lock(spanOf(off, n, rs), true)()
	var wg sync.WaitGroup
	type ask struct {
		r *replica
		p *peer
		c *call
	}
	var asks []ask
	for _, r := range m.set() {
		r.mu.Lock()
		st, p := r.state, r.peer
		r.mu.Unlock()
		if st != stateSync || failed[r] {
			continue
		}
		c := &call{kind: KindChecksums, off: off, length: n, region: rs, wg: &wg}
		if p.send(c) == nil {
			asks = append(asks, ask{r, p, c})
		}
	}
	local, lerr := checksums(ctx, m.local, off, n, rs, &m.bufs)
	wg.Wait()
	if lerr != nil {
		return nil, []error{fmt.Errorf("volume %s: local checksums: %w", m.cfg.VolumeID, lerr)}
	}
	var diffs []Difference
	var errs []error
	for _, a := range asks {
		if a.c.err != nil {
			failed[a.r] = true
			if !errors.Is(a.c.err, errRemoved) {
				errs = append(errs, fmt.Errorf("verify: replica %s: %w", a.r.name, a.c.err))
			}
			continue
		}
		if len(a.c.reply.Sums) != len(local) {
			failed[a.r] = true
			errs = append(errs, fmt.Errorf("verify: replica %s: %d checksums, want %d", a.r.name, len(a.c.reply.Sums), len(local)))
			continue
		}
		for i, s := range local {
			if a.c.reply.Sums[i] != s {
				o := off + int64(i)*rs
				diffs = append(diffs, Difference{Replica: a.r.name, Offset: o, Length: min(rs, off+n-o)})
			}
		}
	}
	return diffs, errs
}

// ReplicaState is where a replica stands.
type ReplicaState string

// Replica states.
const (
	InSync    ReplicaState = "in-sync"     // in the in-sync set; every write waits for it
	OutOfSync ReplicaState = "out-of-sync" // missing regions, not connected (or being dropped)
	Resyncing ReplicaState = "resyncing"   // connected: dirty regions being copied, or rejoin pending
)

// ReplicaStatus is one replica's progress.
type ReplicaStatus struct {
	Name  string
	State ReplicaState
	// RegionsToCopy is the regions of this resync (copied or still dirty);
	// RegionsCopied and BytesCopied what it copied so far.
	RegionsToCopy int64
	RegionsCopied int64
	BytesCopied   int64
	Outstanding   int // requests sent and not answered
	Err           string
}

// Status returns every replica's state.
func (m *Mirror) Status() []ReplicaStatus {
	set := m.set()
	out := make([]ReplicaStatus, 0, len(set))
	for _, r := range set {
		out = append(out, r.status())
	}
	return out
}

// Kick makes an out-of-sync replica's resync try to connect now instead
// of after its backoff (membership says the node is alive again).
func (m *Mirror) Kick(replica string) {
	for _, r := range m.set() {
		if r.name == replica {
			r.kickLoop()
		}
	}
}

// Deposed reports whether a replica answered with a newer epoch: another
// node is the primary now, and writes this Mirror made to its local copy
// after that may never have been acknowledged.
func (m *Mirror) Deposed() bool { return m.deposed.Load() != nil }

// Close stops the Mirror; I/O after it fails with block.ErrClosed. It
// waits for the I/O in flight, flushes the local copy and every replica
// that gets live writes (so that a clean stop leaves nothing they may
// have lost), stops the resyncs, closes every connection and waits for
// the Mirror's goroutines. If every flush succeeded, it then deletes the
// activity log (an error says it could not). Regions of requests still
// unanswered are marked dirty, without Drop: the next Mirror finds them
// and resyncs those replicas.
func (m *Mirror) Close() error {
	var err error
	m.closeOnce.Do(func() {
		m.setMu.Lock()
		m.closing.Store(true)
		m.setMu.Unlock()
		// Wait for the writes that began and the I/O holding the gate
		// (an empty critical section); all later I/O fails.
		m.act.drain()
		m.gate.Lock()
		m.gate.Unlock()
		var wg sync.WaitGroup
		var calls []*call
		flushed := true
		set := m.set()
		for _, r := range set {
			r.mu.Lock()
			p, st := r.peer, r.state
			r.mu.Unlock()
			if p != nil && (st == stateSync || st == stateRejoining || st == stateResync) {
				c := &call{kind: KindFlush, wg: &wg}
				if p.send(c) != nil {
					flushed = false
					continue
				}
				calls = append(calls, c)
			}
		}
		if err := m.local.Flush(m.ctx); err != nil {
			flushed = false
			m.log.Warn("replication: flushing the local copy at close", "err", err)
		}
		wg.Wait()
		for _, c := range calls {
			flushed = flushed && c.err == nil
		}
		m.cancel()
		for _, r := range set {
			r.mu.Lock()
			p := r.peer
			r.mu.Unlock()
			if p != nil {
				p.fail(fmt.Errorf("volume %s: %w", m.cfg.VolumeID, block.ErrClosed))
			}
		}
		m.goMu.Lock()
		m.stopped = true
		m.goMu.Unlock()
		m.wg.Wait()
		// Every copy holds the same durable data wherever a write went:
		// nothing for the next Mirror to repair.
		if flushed && m.deposed.Load() == nil && m.act.repaired.Load() {
			if cerr := m.act.clearAll(); cerr != nil {
				err = fmt.Errorf("volume %s: deleting the activity log: %w", m.cfg.VolumeID, cerr)
			}
		}
	})
	m.wg.Wait()
	return err
}
