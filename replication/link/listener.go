package link

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Dial connects to the link listener at addr for purpose p and runs the
// handshake, within ctx and cfg.HandshakeTimeout. It returns an error
// wrapping ErrAuth if the peer does not hold cfg.Key or rejects ours;
// nothing but the handshake has been sent then.
func Dial(ctx context.Context, addr string, p Purpose, cfg Config) (*Conn, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if !p.valid() {
		return nil, fmt.Errorf("link: dial %s: unknown %s", addr, p)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("link: dial %s for %s: %w", addr, p, err)
	}
	deadline := time.Now().Add(cfg.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	c, err := clientHandshake(nc, p, &cfg)
	if canceled := !stop(); canceled || err != nil {
		// Canceled, even at the last moment, the deadline is in the past.
		nc.Close()
		switch {
		case err == nil:
			err = ctx.Err()
		case ctx.Err() != nil:
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("link: dial %s for %s: %w", addr, p, err)
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// Listener accepts links for every purpose on one TCP listener and hands
// each authenticated connection to the net.Listener of its purpose
// (Accept). A connection for a purpose nobody accepts is refused in the
// handshake.
type Listener struct {
	cfg  Config
	log  *slog.Logger
	tcp  net.Listener
	done chan struct{} // closed by Close

	mu       sync.Mutex // protects purposes, pending, closed
	purposes map[Purpose]*purposeListener
	pending  map[*pendingConn]struct{} // connections in handshake
	closed   bool

	wg sync.WaitGroup // the accept loop and one per connection in handshake or delivery
}

// pendingConn is a connection in handshake.
type pendingConn struct {
	nc      net.Conn
	started time.Time
	evicted bool // closed to make room; under Listener.mu
}

// Listen listens on addr (TCP) for links.
func Listen(addr string, cfg Config) (*Listener, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("link: listen %s: %w", addr, err)
	}
	l := &Listener{
		cfg:      cfg,
		log:      cfg.Logger,
		tcp:      tcp,
		done:     make(chan struct{}),
		purposes: make(map[Purpose]*purposeListener),
		pending:  make(map[*pendingConn]struct{}),
	}
	l.wg.Add(1)
	go l.serve()
	return l, nil
}

// Addr is the TCP address listened on.
func (l *Listener) Addr() net.Addr { return l.tcp.Addr() }

// Accept returns the listener of connections of purpose p: authenticated
// *Conn of that purpose only. Connections of p are refused until it is
// called, and again once that listener is closed; then Accept(p) returns a
// new one. It panics on an unknown purpose.
func (l *Listener) Accept(p Purpose) net.Listener {
	if !p.valid() {
		panic(fmt.Sprintf("link: Accept: unknown %s", p))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if pl := l.purposes[p]; pl != nil {
		return pl
	}
	pl := &purposeListener{l: l, p: p, ch: make(chan *Conn), done: make(chan struct{})}
	if l.closed {
		close(pl.done)
		return pl
	}
	l.purposes[p] = pl
	return pl
}

// Close stops accepting, closes the purposes' listeners and the
// connections in handshake, and waits for their goroutines. Connections
// already accepted stay open. It is safe to call more than once.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.wg.Wait()
		return nil
	}
	l.closed = true
	close(l.done)
	for pc := range l.pending {
		pc.nc.Close()
	}
	for _, pl := range l.purposes {
		pl.closeLocked()
	}
	l.mu.Unlock()
	err := l.tcp.Close()
	l.wg.Wait()
	if err != nil {
		return fmt.Errorf("link: close %s: %w", l.tcp.Addr(), err)
	}
	return nil
}

func (l *Listener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// serve accepts TCP connections until Close.
func (l *Listener) serve() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		nc, err := l.tcp.Accept()
		if err != nil {
			if l.isClosed() {
				return
			}
			// Out of file descriptors and the like: wait, then retry.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("link: accept failed", "addr", l.tcp.Addr().String(), "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-l.done:
				return
			}
		}
		delay = 0
		l.admit(nc)
	}
}

// admit starts the handshake of a new connection, closing the one in
// handshake the longest if all slots are taken.
func (l *Listener) admit(nc net.Conn) {
	pc := &pendingConn{nc: nc, started: time.Now()}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		nc.Close()
		return
	}
	if len(l.pending) >= maxHandshakes {
		var oldest *pendingConn
		for o := range l.pending {
			if oldest == nil || o.started.Before(oldest.started) {
				oldest = o
			}
		}
		oldest.evicted = true
		oldest.nc.Close()
		delete(l.pending, oldest)
	}
	l.pending[pc] = struct{}{}
	l.wg.Add(1)
	go l.handshake(pc)
}

// handshake authenticates a connection and hands it to its purpose's
// listener, or logs why not and closes it.
func (l *Listener) handshake(pc *pendingConn) {
	defer l.wg.Done()
	remote := pc.nc.RemoteAddr().String()
	pc.nc.SetDeadline(pc.started.Add(l.cfg.HandshakeTimeout))
	c, err := serverHandshake(pc.nc, &l.cfg, l.accepts)
	l.mu.Lock()
	delete(l.pending, pc)
	evicted, closed := pc.evicted, l.closed
	l.mu.Unlock()
	switch {
	case err != nil && closed:
		pc.nc.Close()
		return
	case err != nil && evicted:
		l.log.Warn("link: handshake abandoned: too many connections in handshake", "remote", remote)
		pc.nc.Close()
		return
	case err != nil:
		l.log.Warn("link: handshake failed", "remote", remote, "err", err)
		pc.nc.Close()
		return
	}
	pc.nc.SetDeadline(time.Time{})
	l.deliver(c, remote)
}

// deliver hands c to its purpose's listener, or closes it if nobody takes
// it within HandshakeTimeout.
func (l *Listener) deliver(c *Conn, remote string) {
	l.mu.Lock()
	pl := l.purposes[c.purpose]
	l.mu.Unlock()
	if pl == nil { // closed since the handshake checked
		c.Close()
		return
	}
	t := time.NewTimer(l.cfg.HandshakeTimeout)
	defer t.Stop()
	select {
	case pl.ch <- c:
	case <-pl.done:
		c.Close()
	case <-l.done:
		c.Close()
	case <-t.C:
		l.log.Warn("link: connection not accepted in time", "remote", remote, "peer", c.peer, "purpose", c.purpose.String())
		c.Close()
	}
}

func (l *Listener) accepts(p Purpose) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.purposes[p] != nil
}

// purposeListener is the net.Listener of one purpose.
type purposeListener struct {
	l    *Listener
	p    Purpose
	ch   chan *Conn    // authenticated connections, handed over by deliver
	done chan struct{} // closed by Close
	once sync.Once
}

var _ net.Listener = (*purposeListener)(nil)

// Accept returns the next authenticated connection of the purpose (a
// *Conn), or an error wrapping net.ErrClosed once closed.
func (pl *purposeListener) Accept() (net.Conn, error) {
	select {
	case <-pl.done:
		return nil, pl.closedErr()
	default:
	}
	select {
	case c := <-pl.ch:
		return c, nil
	case <-pl.done:
		return nil, pl.closedErr()
	}
}

func (pl *purposeListener) closedErr() error {
	return fmt.Errorf("link: %s listener on %s: %w", pl.p, pl.l.Addr(), net.ErrClosed)
}

// Close stops accepting connections of the purpose; the Listener goes on.
func (pl *purposeListener) Close() error {
	pl.l.mu.Lock()
	defer pl.l.mu.Unlock()
	pl.closeLocked()
	return nil
}

// closeLocked closes pl; the caller holds pl.l.mu.
func (pl *purposeListener) closeLocked() {
	pl.once.Do(func() { close(pl.done) })
	if pl.l.purposes[pl.p] == pl {
		delete(pl.l.purposes, pl.p)
	}
}

// Addr is the Listener's address.
func (pl *purposeListener) Addr() net.Addr { return pl.l.Addr() }
