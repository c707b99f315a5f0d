// Package memnet is an in-memory network for tests of code that dials
// nodes by name: buffered connection pairs (a writer blocks when the
// buffer is full, as on a socket), links that can be cut (existing
// connections break, new dials are refused), delayed, or partitioned.
// Nothing here touches the operating system's network, so tests that use
// it are fast and deterministic in what they can observe.
package memnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Errors.
var (
	// ErrRefused: no listener on the node.
	ErrRefused = errors.New("memnet: connection refused")
	// ErrLinkDown: the link between the nodes is cut.
	ErrLinkDown = errors.New("memnet: link down")
)

// DefaultBuffer is the bytes a connection buffers per direction.
const DefaultBuffer = 1 << 20

// Network is a set of named nodes. The zero value is not usable: call New.
type Network struct {
	buffer int

	mu        sync.Mutex // protects the fields below
	listeners map[string]*listener
	links     map[pair]*linkState
	conns     map[*conn]struct{} // client ends of open connections
}

type pair struct{ a, b string }

func mkpair(a, b string) pair {
	if b < a {
		a, b = b, a
	}
	return pair{a, b}
}

type linkState struct {
	down  bool
	delay time.Duration
}

// New returns a network whose connections buffer buffer bytes each way
// (DefaultBuffer if 0).
func New(buffer int) *Network {
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	return &Network{buffer: buffer, listeners: map[string]*listener{}, links: map[pair]*linkState{}, conns: map[*conn]struct{}{}}
}

// Listen makes node reachable; dials to it arrive on the listener.
func (n *Network) Listen(node string) (net.Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listeners[node] != nil {
		return nil, fmt.Errorf("memnet: node %s already listening", node)
	}
	l := &listener{n: n, node: node, backlog: make(chan *conn, 64), closed: make(chan struct{})}
	n.listeners[node] = l
	return l, nil
}

// Dialer returns a dialer for connections from node from.
func (n *Network) Dialer(from string) *Dialer { return &Dialer{n: n, from: from} }

// Disconnect cuts the link between a and b: their connections break and
// dials between them fail until Reconnect.
func (n *Network) Disconnect(a, b string) {
	n.mu.Lock()
	n.link(a, b).down = true
	var broken []*conn
	for c := range n.conns {
		if mkpair(c.local, c.remote) == mkpair(a, b) {
			broken = append(broken, c)
		}
	}
	n.mu.Unlock()
	for _, c := range broken {
		c.breakLink()
	}
}

// Reconnect restores the link between a and b.
func (n *Network) Reconnect(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.link(a, b).down = false
}

// Partition cuts every link between a node of side and a node not in it
// (among the nodes listening or dialing so far and those named).
func (n *Network) Partition(side []string, others []string) {
	for _, a := range side {
		for _, b := range others {
			n.Disconnect(a, b)
		}
	}
}

// Heal restores every link and removes every delay.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.links = map[pair]*linkState{}
}

// SetDelay delays the bytes of new writes between a and b (both ways) by d.
func (n *Network) SetDelay(a, b string, d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.link(a, b).delay = d
}

// link returns the state of a link; n.mu is held.
func (n *Network) link(a, b string) *linkState {
	p := mkpair(a, b)
	l := n.links[p]
	if l == nil {
		l = &linkState{}
		n.links[p] = l
	}
	return l
}

func (n *Network) delay(a, b string) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.links[mkpair(a, b)]; l != nil {
		return l.delay
	}
	return 0
}

// Dialer dials nodes of a Network from one node.
type Dialer struct {
	n    *Network
	from string
}

// Dial connects to node to.
func (d *Dialer) Dial(ctx context.Context, to string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	n := d.n
	n.mu.Lock()
	if l := n.links[mkpair(d.from, to)]; l != nil && l.down {
		n.mu.Unlock()
		return nil, fmt.Errorf("memnet: dial %s -> %s: %w", d.from, to, ErrLinkDown)
	}
	l := n.listeners[to]
	if l == nil {
		n.mu.Unlock()
		return nil, fmt.Errorf("memnet: dial %s -> %s: %w", d.from, to, ErrRefused)
	}
	client, server := newPair(n, d.from, to)
	n.conns[client] = struct{}{}
	n.mu.Unlock()
	select {
	case l.backlog <- server:
		return client, nil
	case <-l.closed:
	case <-ctx.Done():
	}
	client.Close()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("memnet: dial %s -> %s: %w", d.from, to, ErrRefused)
}

type listener struct {
	n       *Network
	node    string
	backlog chan *conn
	once    sync.Once
	closed  chan struct{}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.backlog:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.n.mu.Lock()
		if l.n.listeners[l.node] == l {
			delete(l.n.listeners, l.node)
		}
		l.n.mu.Unlock()
		for {
			select {
			case c := <-l.backlog:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

func (l *listener) Addr() net.Addr { return Addr(l.node) }

// Addr is a node's address.
type Addr string

// Network returns "memnet".
func (Addr) Network() string  { return "memnet" }
func (a Addr) String() string { return string(a) }

// pipe is one direction of a connection.
type pipe struct {
	max int

	mu      sync.Mutex // protects the fields below
	chunks  []chunk
	size    int
	rclosed bool  // the reading end closed: writes fail
	wclosed bool  // the writing end closed: reads see EOF once drained
	broken  error // the link was cut: both fail
	changed chan struct{}
}

type chunk struct {
	b     []byte
	ready time.Time
}

func newPipe(max int) *pipe { return &pipe{max: max, changed: make(chan struct{})} }

// notify wakes waiters; p.mu is held.
func (p *pipe) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// conn is one end of a connection.
type conn struct {
	n             *Network
	local, remote string
	in, out       *pipe
	peer          *conn

	mu            sync.Mutex // protects the deadlines and closed
	readDeadline  time.Time
	writeDeadline time.Time
	deadlineSet   chan struct{}
	closed        bool
}

func newPair(n *Network, from, to string) (client, server *conn) {
	a, b := newPipe(n.buffer), newPipe(n.buffer)
	client = &conn{n: n, local: from, remote: to, in: b, out: a, deadlineSet: make(chan struct{})}
	server = &conn{n: n, local: to, remote: from, in: a, out: b, deadlineSet: make(chan struct{})}
	client.peer, server.peer = server, client
	return client, server
}

func (c *conn) deadline(write bool) (time.Time, chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if write {
		return c.writeDeadline, c.deadlineSet
	}
	return c.readDeadline, c.deadlineSet
}

func (c *conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// wait blocks until ch is closed, the deadline passes, the deadline
// changes or at (if not zero) comes.
func wait(ch <-chan struct{}, deadline time.Time, dset <-chan struct{}, at time.Time) error {
	var timer *time.Timer
	var tc <-chan time.Time
	next := deadline
	if !at.IsZero() && (next.IsZero() || at.Before(next)) {
		next = at
	}
	if !next.IsZero() {
		d := time.Until(next)
		if d <= 0 {
			if next.Equal(deadline) {
				return os.ErrDeadlineExceeded
			}
			return nil
		}
		timer = time.NewTimer(d)
		defer timer.Stop()
		tc = timer.C
	}
	select {
	case <-ch:
	case <-dset:
	case <-tc:
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return os.ErrDeadlineExceeded
		}
	}
	return nil
}

func (c *conn) Read(b []byte) (int, error) {
	p := c.in
	for {
		if c.isClosed() {
			return 0, net.ErrClosed
		}
		dl, dset := c.deadline(false)
		if !dl.IsZero() && !time.Now().Before(dl) {
			return 0, os.ErrDeadlineExceeded
		}
		p.mu.Lock()
		if p.broken != nil {
			err := p.broken
			p.mu.Unlock()
			return 0, err
		}
		var at time.Time
		if len(p.chunks) > 0 {
			ch := &p.chunks[0]
			if now := time.Now(); !ch.ready.After(now) {
				n := copy(b, ch.b)
				ch.b = ch.b[n:]
				if len(ch.b) == 0 {
					p.chunks[0] = chunk{}
					p.chunks = p.chunks[1:]
				}
				p.size -= n
				p.notify()
				p.mu.Unlock()
				return n, nil
			}
			at = ch.ready
		} else if p.wclosed {
			p.mu.Unlock()
			return 0, io.EOF
		}
		changed := p.changed
		p.mu.Unlock()
		if err := wait(changed, dl, dset, at); err != nil {
			return 0, err
		}
	}
}

func (c *conn) Write(b []byte) (int, error) {
	p := c.out
	delay := c.n.delay(c.local, c.remote)
	written := 0
	for {
		if c.isClosed() {
			return written, net.ErrClosed
		}
		dl, dset := c.deadline(true)
		if !dl.IsZero() && !time.Now().Before(dl) {
			return written, os.ErrDeadlineExceeded
		}
		p.mu.Lock()
		switch {
		case p.broken != nil:
			err := p.broken
			p.mu.Unlock()
			return written, err
		case p.rclosed:
			p.mu.Unlock()
			return written, fmt.Errorf("memnet: write to %s: %w", c.remote, errReset)
		}
		if room := p.max - p.size; room > 0 {
			k := min(room, len(b)-written)
			p.chunks = append(p.chunks, chunk{b: append([]byte(nil), b[written:written+k]...), ready: time.Now().Add(delay)})
			p.size += k
			written += k
			p.notify()
			if written == len(b) {
				p.mu.Unlock()
				return written, nil
			}
		}
		changed := p.changed
		p.mu.Unlock()
		if err := wait(changed, dl, dset, time.Time{}); err != nil {
			return written, err
		}
	}
}

var errReset = errors.New("connection reset by peer")

func (c *conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.deadlineSet)
	c.deadlineSet = make(chan struct{})
	c.mu.Unlock()
	c.in.mu.Lock()
	c.in.rclosed = true
	c.in.chunks, c.in.size = nil, 0
	c.in.notify()
	c.in.mu.Unlock()
	c.out.mu.Lock()
	c.out.wclosed = true
	c.out.notify()
	c.out.mu.Unlock()
	c.n.mu.Lock()
	delete(c.n.conns, c)
	delete(c.n.conns, c.peer)
	c.n.mu.Unlock()
	return nil
}

// breakLink fails both directions, as a cut cable (after the TCP timeout).
func (c *conn) breakLink() {
	err := fmt.Errorf("memnet: %s <-> %s: %w", c.local, c.remote, ErrLinkDown)
	for _, p := range []*pipe{c.in, c.out} {
		p.mu.Lock()
		if p.broken == nil {
			p.broken = err
		}
		p.notify()
		p.mu.Unlock()
	}
}

func (c *conn) LocalAddr() net.Addr  { return Addr(c.local) }
func (c *conn) RemoteAddr() net.Addr { return Addr(c.remote) }

func (c *conn) SetDeadline(t time.Time) error {
	c.setDeadlines(&t, &t)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.setDeadlines(&t, nil)
	return nil
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.setDeadlines(nil, &t)
	return nil
}

func (c *conn) setDeadlines(r, w *time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r != nil {
		c.readDeadline = *r
	}
	if w != nil {
		c.writeDeadline = *w
	}
	close(c.deadlineSet)
	c.deadlineSet = make(chan struct{})
}
