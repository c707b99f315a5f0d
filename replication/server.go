package replication

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"

	"tandem.io/tandem/volume/block"
)

// ServerConfig configures a replica Server.
type ServerConfig struct {
	Copies Copies
	Epochs Epochs
	Logger *slog.Logger
	// MaxRequests bounds the requests in flight per connection (default
	// 256); MaxInflightBytes bounds the memory they hold (default 64 MiB,
	// at least the largest request, a little over MaxWriteData). Past
	// either, the server stops reading the connection until some finish:
	// backpressure, not unbounded memory.
	MaxRequests      int
	MaxInflightBytes int64
}

// Server serves a node's copies to the primaries that mirror to it. Each
// connection carries one volume's stream, opened by a Hello.
//
// Epoch fencing is exact: per volume, every request is checked and applied
// under a shared lock, and a Hello (or RaiseEpoch) takes it exclusively
// to persist and accept a newer epoch and to start a new stream. So once a
// Hello returned, no request of an older stream or epoch is applied, even
// one already read and waiting to be applied: it is answered StaleEpoch
// (older epoch) or its connection is closed (older stream, same epoch).
type Server struct {
	cfg  ServerConfig
	log  *slog.Logger
	bufs bufferPool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the server started

	mu     sync.Mutex // protects the fields below
	vols   map[string]*volumeState
	conns  map[*serverConn]struct{}
	closed bool

	// beforeApply, set by tests, runs where a request is applied before it
	// takes the volume lock.
	beforeApply func(Message)
}

// volumeState is the fencing state of one volume on this node.
type volumeState struct {
	mu     sync.RWMutex // shared: check and apply a request; exclusive: accept an epoch, start a stream
	loaded bool
	epoch  uint64 // highest accepted (persisted)
	stream uint64 // the current stream; requests of others are not applied
}

// NewServer returns a server; it serves nothing until Serve or ServeConn.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Copies == nil || cfg.Epochs == nil {
		return nil, errors.New("replication: server needs Copies and Epochs")
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = 256
	}
	if cfg.MaxInflightBytes <= 0 {
		cfg.MaxInflightBytes = 64 << 20
	}
	if cfg.MaxInflightBytes < maxCost {
		return nil, fmt.Errorf("replication: MaxInflightBytes %d below one maximal request (%d)", cfg.MaxInflightBytes, maxCost)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, log: log, ctx: ctx, cancel: cancel,
		vols: map[string]*volumeState{}, conns: map[*serverConn]struct{}{}}, nil
}

// Serve accepts connections from l until l fails, ctx is cancelled or the
// server is closed, and serves each.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	stopClose := context.AfterFunc(s.ctx, func() { l.Close() })
	defer stopClose()
	for {
		c, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return net.ErrClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if !s.track() {
			c.Close()
			return net.ErrClosed
		}
		go func() {
			defer s.wg.Done()
			s.ServeConn(ctx, c)
		}()
	}
}

// track adds a goroutine to the server's wait group unless it is closed.
func (s *Server) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// ServeConn serves one connection until it fails, ctx is cancelled or the
// server is closed; it closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	if !s.track() {
		c.Close()
		return net.ErrClosed
	}
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	sc := &serverConn{s: s, c: c, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1), space: make(chan struct{}, 1)}
	s.mu.Lock()
	s.conns[sc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, sc)
		s.mu.Unlock()
	}()
	return sc.serve()
}

// RaiseEpoch persists and accepts epoch for the volume and fences every
// stream opened before: when it returns, none of their requests is
// applied any more. A node calls it before it serves the volume as
// primary at that epoch, so that the deposed primary cannot write to the
// copy it now serves. An epoch older than the accepted one is refused
// with ErrStaleEpoch.
func (s *Server) RaiseEpoch(volumeID string, epoch uint64) error {
	v := s.volume(volumeID)
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := s.loadEpoch(volumeID, v); err != nil {
		return err
	}
	if epoch < v.epoch {
		return fmt.Errorf("volume %s: epoch %d, accepted %d: %w", volumeID, epoch, v.epoch, ErrStaleEpoch)
	}
	if epoch > v.epoch {
		if err := s.cfg.Epochs.SetEpoch(volumeID, epoch); err != nil {
			return fmt.Errorf("volume %s: persisting epoch %d: %w", volumeID, epoch, err)
		}
		v.epoch = epoch
	}
	v.stream++
	return nil
}

// Close closes every connection and waits for the server's goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Server) volume(id string) *volumeState {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vols[id]
	if v == nil {
		v = &volumeState{}
		s.vols[id] = v
	}
	return v
}

// loadEpoch reads the persisted epoch once; v.mu is held exclusively.
func (s *Server) loadEpoch(id string, v *volumeState) error {
	if v.loaded {
		return nil
	}
	e, err := s.cfg.Epochs.Epoch(id)
	if err != nil {
		return fmt.Errorf("volume %s: reading accepted epoch: %w", id, err)
	}
	v.epoch, v.loaded = e, true
	return nil
}

// serverConn is one connection: a reader that decodes requests and
// applies each (a write without FUA itself, anything slower in a goroutine
// of its own), within a budget of requests and bytes, and a writer that
// sends the replies, batched.
type serverConn struct {
	s      *Server
	c      net.Conn
	ctx    context.Context
	cancel context.CancelFunc // stops the reader when the writer ends

	// The stream, set by the Hello (before any other request runs).
	volumeID string
	epoch    uint64
	stream   uint64
	vol      *volumeState
	copy     atomic.Pointer[copyRef]

	handlers sync.WaitGroup

	mu       sync.Mutex // protects the fields below
	inflight int        // requests read and not yet answered on the wire
	bytes    int64      // memory they hold
	peak     int64      // the most bytes ever held (tests)
	replies  []outReply
	done     bool // the reader stopped: the writer exits when replies are sent
	wake     chan struct{}
	space    chan struct{}
}

type copyRef struct{ c Copy }

type outReply struct {
	r     Reply
	cost  int64
	close bool // close the connection once sent (protocol error, superseded)
}

func (sc *serverConn) serve() error {
	writerDone := make(chan error, 1)
	go func() {
		err := sc.writeLoop()
		sc.cancel()
		writerDone <- err
	}()
	stop := context.AfterFunc(sc.ctx, func() { sc.c.Close() })
	defer stop()
	err := sc.readLoop()
	sc.handlers.Wait()
	sc.mu.Lock()
	sc.done = true
	sc.mu.Unlock()
	sc.signal()
	werr := <-writerDone
	sc.c.Close()
	if err == nil {
		err = werr
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// maxCost is the most a request can cost (a checksums request over
// maximal regions, just above a maximal write).
const maxCost = HeaderLen + MaxVolumeIDLen + max(MaxWriteData, MaxChecksumRegion+MaxChecksums*sha256.Size)

// cost is the memory a request holds until its reply is sent.
func cost(h Header) int64 {
	c := int64(HeaderLen) + int64(h.BodyLen)
	if h.Kind == KindChecksums {
		c += int64(min(h.C, MaxChecksumRegion)) + int64((h.B-1)/h.C+1)*sha256.Size
	}
	return c
}

func (sc *serverConn) readLoop() error {
	mr := messageReader{r: bufio.NewReaderSize(sc.c, 64<<10)}
	for {
		h, err := mr.readHeader()
		if err != nil {
			if errors.Is(err, ErrMalformed) || errors.Is(err, ErrTooLong) {
				sc.protocolError(0, err)
			}
			return err
		}
		c := cost(h)
		if err := sc.acquire(c); err != nil {
			return err
		}
		body := sc.s.bufs.get(int(h.BodyLen))
		m, err := mr.readBody(h, body)
		if err != nil {
			sc.s.bufs.put(body)
			sc.release(c)
			if errors.Is(err, ErrMalformed) {
				sc.protocolError(h.ID, err)
			}
			return err
		}
		if hello, ok := m.(*Hello); ok {
			sc.s.bufs.put(body)
			if sc.vol != nil {
				sc.release(c)
				err := fmt.Errorf("%w: second hello on a stream", ErrProtocol)
				sc.protocolError(h.ID, err)
				return err
			}
			sc.queue(outReply{r: sc.hello(hello), cost: c})
			continue
		}
		if h.Kind == KindReply || sc.vol == nil {
			sc.s.bufs.put(body)
			sc.release(c)
			err := fmt.Errorf("%w: %v before hello or from a primary", ErrProtocol, h.Kind)
			sc.protocolError(h.ID, err)
			return err
		}
		if vol, epoch := requestTarget(m); vol != sc.volumeID || epoch != sc.epoch {
			sc.s.bufs.put(body)
			sc.release(c)
			err := fmt.Errorf("%w: %v for volume %s epoch %d on the stream of %s epoch %d",
				ErrProtocol, h.Kind, vol, epoch, sc.volumeID, sc.epoch)
			sc.protocolError(h.ID, err)
			return err
		}
		if quick(m) {
			out := sc.handle(m)
			sc.s.bufs.put(body)
			out.cost = c
			sc.queue(out)
			continue
		}
		sc.handlers.Add(1)
		go func() {
			defer sc.handlers.Done()
			out := sc.handle(m)
			sc.s.bufs.put(body)
			out.cost = c
			sc.queue(out)
		}()
	}
}

// quick reports whether m is applied on the reader goroutine: a write
// without FUA, which only copies its data into the page cache. A goroutine
// of its own per request cost more CPU than the write (its creation, its
// stack grown on each request, a thread woken to run it), and on a loaded
// node that CPU is what bounds the mirror. The reader reads nothing while
// it applies one; a write stalled by the kernel's dirty-page throttling
// stalls the stream, which is the backpressure a primary should see. FUA
// writes, flushes, barriers and checksums wait for the disk and run side
// by side in goroutines.
func quick(m Message) bool {
	w, ok := m.(*Write)
	return ok && !w.FUA
}

func requestTarget(m Message) (string, uint64) {
	switch m := m.(type) {
	case *Write:
		return m.VolumeID, m.Epoch
	case *Unmap:
		return m.VolumeID, m.Epoch
	case *Flush:
		return m.VolumeID, m.Epoch
	case *Barrier:
		return m.VolumeID, m.Epoch
	case *Checksums:
		return m.VolumeID, m.Epoch
	case *Hello:
		return m.VolumeID, m.Epoch
	}
	return "", 0
}

func (sc *serverConn) protocolError(id uint64, err error) {
	sc.s.log.Warn("replication: protocol error", "remote", sc.c.RemoteAddr(), "err", err)
	sc.queue(outReply{r: Reply{ID: id, Status: StatusProtocol, Message: err.Error()}, close: true})
}

// hello opens the stream: it runs in the reader, before any other request
// of the connection is read.
func (sc *serverConn) hello(m *Hello) Reply {
	s := sc.s
	v := s.volume(m.VolumeID)
	v.mu.Lock()
	defer v.mu.Unlock()
	fail := func(err error) Reply {
		return Reply{ID: m.ID, Status: statusOf(err), Message: err.Error(), Epoch: v.epoch}
	}
	if err := s.loadEpoch(m.VolumeID, v); err != nil {
		return fail(err)
	}
	if m.Epoch < v.epoch {
		return fail(fmt.Errorf("volume %s: epoch %d, accepted %d: %w", m.VolumeID, m.Epoch, v.epoch, ErrStaleEpoch))
	}
	c, err := s.cfg.Copies.Copy(m.VolumeID)
	if err != nil {
		return Reply{ID: m.ID, Status: StatusNoCopy, Message: err.Error(), Epoch: v.epoch}
	}
	if m.Epoch > v.epoch {
		if err := s.cfg.Epochs.SetEpoch(m.VolumeID, m.Epoch); err != nil {
			return Reply{ID: m.ID, Status: StatusFailed, Epoch: v.epoch,
				Message: fmt.Sprintf("volume %s: persisting epoch %d: %v", m.VolumeID, m.Epoch, err)}
		}
		v.epoch = m.Epoch
	}
	v.stream++
	sc.volumeID, sc.epoch, sc.stream, sc.vol = m.VolumeID, m.Epoch, v.stream, v
	sc.copy.Store(&copyRef{c})
	s.log.Debug("replication: stream opened", "volume", m.VolumeID, "epoch", m.Epoch, "remote", sc.c.RemoteAddr())
	return Reply{ID: m.ID, Size: uint64(c.Size()), Epoch: v.epoch}
}

// handle checks the request's epoch and stream and applies it, under the
// volume's shared lock.
func (sc *serverConn) handle(m Message) outReply {
	if f := sc.s.beforeApply; f != nil {
		f(m)
	}
	id := m.header().ID
	v := sc.vol
	v.mu.RLock()
	defer v.mu.RUnlock()
	if sc.epoch < v.epoch {
		return outReply{r: Reply{ID: id, Status: StatusStaleEpoch, Epoch: v.epoch,
			Message: fmt.Sprintf("volume %s: epoch %d, accepted %d", sc.volumeID, sc.epoch, v.epoch)}}
	}
	if sc.stream != v.stream {
		// A newer stream of the same epoch took over: this one is dead.
		return outReply{r: Reply{ID: id, Status: StatusFailed, Message: "stream superseded"}, close: true}
	}
	r, err := sc.apply(m)
	r.ID = id
	if err != nil {
		r.Status, r.Message = statusOf(err), err.Error()
	}
	return outReply{r: r}
}

func (sc *serverConn) apply(m Message) (Reply, error) {
	c := sc.copy.Load().c
	ctx := sc.ctx
	inRange := func(off, n uint64) error {
		if size := uint64(c.Size()); off > size || n > size-off {
			return fmt.Errorf("volume %s: %d bytes at %d of %d: %w", sc.volumeID, n, off, size, block.ErrOutOfRange)
		}
		return nil
	}
	switch m := m.(type) {
	case *Write:
		if err := inRange(m.Off, uint64(len(m.Data))); err != nil {
			return Reply{}, err
		}
		return Reply{}, c.WriteAt(ctx, m.Data, int64(m.Off), m.FUA)
	case *Unmap:
		if err := inRange(m.Off, m.Len); err != nil {
			return Reply{}, err
		}
		return Reply{}, c.Unmap(ctx, int64(m.Off), int64(m.Len))
	case *Flush:
		return Reply{}, c.Flush(ctx)
	case *Barrier:
		if err := sc.s.cfg.Copies.Barrier(ctx, sc.volumeID, m.Op); err != nil {
			return Reply{}, err
		}
		nc, err := sc.s.cfg.Copies.Copy(sc.volumeID)
		if err != nil {
			return Reply{}, fmt.Errorf("volume %s after barrier: %w", sc.volumeID, err)
		}
		sc.copy.Store(&copyRef{nc})
		return Reply{}, nil
	case *Checksums:
		if err := inRange(m.Off, m.Len); err != nil {
			return Reply{}, err
		}
		sums, err := checksums(ctx, c, int64(m.Off), int64(m.Len), int64(m.RegionSize), &sc.s.bufs)
		return Reply{Sums: sums}, err
	}
	return Reply{}, fmt.Errorf("%w: unexpected %T", ErrProtocol, m)
}

// checksums returns the SHA-256 of each region of [off, off+n).
func checksums(ctx context.Context, c block.Device, off, n, region int64, bufs *bufferPool) ([]Sum, error) {
	buf := bufs.get(int(min(region, n)))
	defer bufs.put(buf)
	sums := make([]Sum, 0, (n-1)/region+1)
	for o := off; o < off+n; o += region {
		p := buf[:min(region, off+n-o)]
		if err := c.ReadAt(ctx, p, o); err != nil {
			return nil, fmt.Errorf("checksum at %d: %w", o, err)
		}
		sums = append(sums, sha256.Sum256(p))
	}
	return sums, nil
}

// acquire waits until the request fits the connection's budget.
func (sc *serverConn) acquire(c int64) error {
	for {
		sc.mu.Lock()
		if sc.inflight < sc.s.cfg.MaxRequests && sc.bytes+c <= sc.s.cfg.MaxInflightBytes {
			sc.inflight++
			sc.bytes += c
			sc.peak = max(sc.peak, sc.bytes)
			sc.mu.Unlock()
			return nil
		}
		sc.mu.Unlock()
		select {
		case <-sc.space:
		case <-sc.ctx.Done():
			return sc.ctx.Err()
		}
	}
}

func (sc *serverConn) release(c int64) {
	sc.mu.Lock()
	sc.inflight--
	sc.bytes -= c
	sc.mu.Unlock()
	select {
	case sc.space <- struct{}{}:
	default:
	}
}

func (sc *serverConn) queue(r outReply) {
	sc.mu.Lock()
	sc.replies = append(sc.replies, r)
	sc.mu.Unlock()
	sc.signal()
}

func (sc *serverConn) signal() {
	select {
	case sc.wake <- struct{}{}:
	default:
	}
}

// writeLoop sends replies as they come, flushing when none is waiting.
func (sc *serverConn) writeLoop() error {
	bw := bufio.NewWriterSize(sc.c, 64<<10)
	var buf []byte
	var batch []outReply
	for {
		runtime.Gosched() // let replies being made now join the batch
		sc.mu.Lock()
		batch, sc.replies = sc.replies, batch[:0]
		done := sc.done
		sc.mu.Unlock()
		if len(batch) == 0 {
			if done {
				return nil
			}
			select {
			case <-sc.wake:
			case <-sc.ctx.Done():
				return sc.ctx.Err()
			}
			continue
		}
		closing := false
		for _, r := range batch {
			buf = r.r.AppendMarshal(buf[:0])
			if _, err := bw.Write(buf); err != nil {
				sc.c.Close()
				return err
			}
			closing = closing || r.close
		}
		if err := bw.Flush(); err != nil {
			sc.c.Close()
			return err
		}
		for _, r := range batch {
			if r.cost > 0 {
				sc.release(r.cost)
			}
		}
		if closing {
			sc.c.Close()
			return nil
		}
	}
}
