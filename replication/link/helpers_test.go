package link

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// testKey is a fixed key, different for each seed.
func testKey(seed byte) Key {
	var k Key
	for i := range k {
		k[i] = seed + byte(i)
	}
	return k
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func testConfig(name string, key Key) (Config, *logBuffer) {
	logs := &logBuffer{}
	return Config{Key: key, Name: name, Logger: slog.New(slog.NewTextHandler(logs, nil))}, logs
}

// listen starts a Listener on loopback, closed at the end of the test.
func listen(t testing.TB, cfg Config) *Listener {
	t.Helper()
	l, err := Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func (l *Listener) pendingCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pending)
}

// acceptOne accepts one connection of pl in the background.
func acceptOne(pl net.Listener) <-chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := pl.Accept()
		ch <- acceptResult{c, err}
	}()
	return ch
}

type acceptResult struct {
	c   net.Conn
	err error
}

// dialPair returns both ends of a link between two nodes on loopback.
func dialPair(t testing.TB, client, server Config, p Purpose) (*Conn, *Conn) {
	t.Helper()
	l := listen(t, server)
	acc := acceptOne(l.Accept(p))
	c, err := Dial(context.Background(), l.Addr().String(), p, client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := <-acc
	if r.err != nil {
		t.Fatal(r.err)
	}
	s := r.c.(*Conn)
	t.Cleanup(func() { s.Close() })
	return c, s
}

// proxy relays TCP connections to a target, records what passes each way,
// and can flip one bit at a given offset of either direction.
type proxy struct {
	ln     net.Listener
	target string
	flip   [2]int // byte offset to flip per direction (toServer, toClient); -1: none

	mu  sync.Mutex
	rec [2]bytes.Buffer // what the proxy received from the client, from the server

	wg sync.WaitGroup
}

const (
	toServer = 0
	toClient = 1
)

func newProxy(t testing.TB, target string, flipToServer, flipToClient int) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, flip: [2]int{flipToServer, flipToClient}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		go p.pump(toServer, c, s)
		go p.pump(toClient, s, c)
	}
}

// pump copies src to dst until either ends, then closes both.
func (p *proxy) pump(dir int, src, dst net.Conn) {
	defer p.wg.Done()
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	off := 0
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if f := p.flip[dir]; f >= off && f < off+n {
				buf[f-off] ^= 0x10
			}
			off += n
			p.mu.Lock()
			p.rec[dir].Write(buf[:n])
			p.mu.Unlock()
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// recorded returns what went each way so far.
func (p *proxy) recorded(dir int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.rec[dir].Bytes())
}

// fakeConn is a net.Conn reading a fixed input and recording writes, for
// driving one side of the handshake or the frame reader without a peer.
type fakeConn struct {
	r      io.Reader
	w      bytes.Buffer
	closed bool
}

func (f *fakeConn) Read(p []byte) (int, error)       { return f.r.Read(p) }
func (f *fakeConn) Write(p []byte) (int, error)      { return f.w.Write(p) }
func (f *fakeConn) Close() error                     { f.closed = true; return nil }
func (f *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (f *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2} }
func (f *fakeConn) SetDeadline(time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// errorsIsAny reports whether err is one of targets.
func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// readUntilClosed reads c until it fails and returns what it read and the
// error. A read timeout (10s) means the peer did not close.
func readUntilClosed(t testing.TB, c net.Conn) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if isTimeout(err) {
				t.Fatalf("the peer did not close the connection (read %d bytes)", len(got))
			}
			return got, err
		}
	}
}

func mustContain(t testing.TB, s, sub string) {
	t.Helper()
	if !strings.Contains(s, sub) {
		t.Fatalf("%q does not contain %q", s, sub)
	}
}
