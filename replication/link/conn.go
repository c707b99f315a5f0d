package link

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	frameHeader = 4  // big-endian length of the ciphertext that follows
	tagLen      = 16 // AES-GCM tag
	maxSealed   = MaxFrame + tagLen
	readBufSize = 16 << 10 // small frames several at a time; big ones bypass it
	writeBatch  = 4        // frames sealed before a system call
)

func newReader(nc net.Conn) *bufio.Reader { return bufio.NewReaderSize(nc, readBufSize) }

// Conn is an authenticated link to a peer holding the cluster key. It is a
// net.Conn: one goroutine may Read while another Writes, and Close unblocks
// both. After a Write fails (a write deadline included) the connection is
// broken: a frame may have been cut, so every later Write fails too. A read
// deadline is harmless: a frame read in part is completed by the next Read.
type Conn struct {
	nc       net.Conn
	peer     string
	purpose  Purpose
	insecure bool

	// broken is the error that made the connection close itself (a frame
	// that failed authentication), given to the writer too.
	broken atomic.Pointer[error]

	rmu    sync.Mutex // protects the read side: br to rerr
	br     *bufio.Reader
	rk     frameKey
	rhdr   [frameHeader]byte
	rhdrN  int    // header bytes read
	rbuf   []byte // the frame's ciphertext, decrypted in place
	rbodyN int    // ciphertext bytes read
	plain  []byte // decrypted bytes not yet returned (in rbuf)
	rerr   error  // sticky

	wmu  sync.Mutex // protects the write side: wk to werr
	wk   frameKey
	whdr [frameHeader]byte
	wbuf []byte
	werr error // sticky
}

var _ net.Conn = (*Conn)(nil)

// newConn wraps nc after a handshake; br holds what was read past it.
func newConn(nc net.Conn, br *bufio.Reader, peer string, p Purpose, insecure bool, readKey, writeKey []byte) (*Conn, error) {
	c := &Conn{nc: nc, br: br, peer: peer, purpose: p, insecure: insecure}
	if insecure {
		return c, nil
	}
	var err error
	if c.rk, err = newFrameKey(readKey); err != nil {
		return nil, err
	}
	if c.wk, err = newFrameKey(writeKey); err != nil {
		return nil, err
	}
	return c, nil
}

// Peer is the peer's name, as it claimed in the authenticated handshake
// (any holder of the key can claim any name).
func (c *Conn) Peer() string { return c.peer }

// Read reads decrypted bytes (raw ones on an insecure link).
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.insecure {
		return c.br.Read(p)
	}
	for {
		if len(c.plain) > 0 {
			n := copy(p, c.plain)
			c.plain = c.plain[n:]
			return n, nil
		}
		if c.rerr != nil {
			return 0, c.rerr
		}
		if len(p) == 0 {
			return 0, nil
		}
		n, err := c.readFrame(p)
		if err != nil || n > 0 {
			return n, err
		}
	}
}

// readFrame reads and decrypts one frame: straight into p if it fits (and
// returns its length), else into c.plain. It resumes a frame cut by a read
// deadline.
func (c *Conn) readFrame(p []byte) (int, error) {
	for c.rhdrN < frameHeader {
		n, err := c.br.Read(c.rhdr[c.rhdrN:])
		c.rhdrN += n
		if err != nil {
			return 0, c.readFailed(err, c.rhdrN == 0)
		}
	}
	size := int(binary.BigEndian.Uint32(c.rhdr[:]))
	if size < tagLen || size > maxSealed {
		return 0, c.fatal(fmt.Errorf("%w: %d bytes, at most %d", ErrFrameSize, size, maxSealed))
	}
	if cap(c.rbuf) < size {
		c.rbuf = make([]byte, max(size, min(2*cap(c.rbuf), maxSealed)))
	}
	body := c.rbuf[:size]
	if c.rbodyN < size {
		n, err := io.ReadFull(c.br, body[c.rbodyN:])
		c.rbodyN += n
		if err != nil {
			return 0, c.readFailed(err, false)
		}
	}
	c.rhdrN, c.rbodyN = 0, 0
	if err := c.rk.next(); err != nil {
		return 0, c.fatal(err)
	}
	if len(p) >= size-tagLen {
		out, err := c.rk.aead.Open(p[:0], c.rk.nonce[:], body, c.rhdr[:])
		if err != nil {
			return 0, c.fatal(ErrFrameAuth)
		}
		return len(out), nil
	}
	out, err := c.rk.aead.Open(body[:0], c.rk.nonce[:], body, c.rhdr[:])
	if err != nil {
		return 0, c.fatal(ErrFrameAuth)
	}
	c.plain = out
	return 0, nil
}

// readFailed sorts a read error: a timeout leaves the frame to be
// resumed; anything else ends the read side.
func (c *Conn) readFailed(err error, atFrameStart bool) error {
	if isTimeout(err) {
		return err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if atFrameStart && err == io.EOF {
			c.rerr = io.EOF
			return io.EOF
		}
		err = fmt.Errorf("link: read from %s: connection closed inside a frame: %w", c.who(), io.ErrUnexpectedEOF)
	}
	c.rerr = err
	return err
}

// fatal ends the connection on a protocol violation.
func (c *Conn) fatal(err error) error {
	err = fmt.Errorf("link: read from %s: %w", c.who(), err)
	c.rerr = err
	c.broken.CompareAndSwap(nil, &err)
	c.nc.Close()
	return err
}

func (c *Conn) who() string { return fmt.Sprintf("%q at %s", c.peer, c.nc.RemoteAddr()) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Write encrypts p in frames of at most MaxFrame bytes and sends them,
// up to writeBatch frames per system call (raw bytes on an insecure link).
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.insecure {
		return c.nc.Write(p)
	}
	if c.werr != nil {
		return 0, c.werr
	}
	n := 0
	for len(p) > 0 {
		batch, taken := c.wbuf[:0], 0
		for range writeBatch {
			if taken == len(p) {
				break
			}
			chunk := p[taken : taken+min(len(p)-taken, MaxFrame)]
			need := len(batch) + frameHeader + len(chunk) + tagLen
			if cap(batch) < need {
				grown := make([]byte, len(batch), max(need, min(2*cap(batch), writeBatch*(frameHeader+maxSealed))))
				copy(grown, batch)
				batch, c.wbuf = grown, grown[:0]
			}
			binary.BigEndian.PutUint32(c.whdr[:], uint32(len(chunk)+tagLen))
			if err := c.wk.next(); err != nil {
				c.werr = fmt.Errorf("link: write to %s: %w", c.who(), err)
				return n, c.werr
			}
			batch = append(batch, c.whdr[:]...)
			batch = c.wk.aead.Seal(batch, c.wk.nonce[:], chunk, c.whdr[:])
			taken += len(chunk)
		}
		if _, err := c.nc.Write(batch); err != nil {
			if b := c.broken.Load(); b != nil {
				err = *b
			}
			c.werr = err
			return n, err
		}
		n += taken
		p = p[taken:]
	}
	return n, nil
}

// Close closes the connection; a blocked Read or Write returns.
func (c *Conn) Close() error { return c.nc.Close() }

// LocalAddr is the local TCP address.
func (c *Conn) LocalAddr() net.Addr { return c.nc.LocalAddr() }

// RemoteAddr is the peer's TCP address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// SetDeadline sets the read and write deadlines (see Conn on writes).
func (c *Conn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline (see Conn).
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.nc.SetWriteDeadline(t) }
