package link

import (
	"bufio"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
)

// Wire constants of the handshake (see the package doc).
const (
	magic        = "TLNK"
	version      = 1
	nonceLen     = 32
	macLen       = sha256.Size
	helloFixed   = len(magic) + 1 + 1 + 1 + nonceLen + 1 // up to the name length
	finishLen    = 1 + macLen
	resultLen    = 1
	maxHelloLen  = helloFixed + MaxNameLen + macLen // the longest handshake message
	flagInsecure = 1 << 0
)

// Handshake status codes.
const (
	statusOK         = 0
	statusAuth       = 1 // the other side's MAC is wrong
	statusVersion    = 2 // unsupported version; the reply carries ours
	statusNoListener = 3 // no listener for the purpose
)

// Key-derivation labels: the salt separates this package's keys from
// Key.Derive's (which has none); the MAC labels have the same length.
const (
	handshakeSalt   = "tandem link v1"
	macKeyInfo      = "tandem link v1 handshake mac"
	serverMACLabel  = "tandem link v1 server proof"
	clientMACLabel  = "tandem link v1 client proof"
	clientKeyInfo   = "tandem link v1 client to server"
	serverKeyInfo   = "tandem link v1 server to client"
	sessionKeyBytes = 32 // AES-256
)

// errShort: the message is longer than the bytes given; n says how long.
var errShort = errors.New("short handshake message")

// clientHello opens a connection.
type clientHello struct {
	Version byte
	Purpose Purpose
	Flags   byte
	Nonce   [nonceLen]byte
	Name    string
}

func (m *clientHello) appendMarshal(b []byte) []byte {
	b = append(b, magic...)
	b = append(b, m.Version, byte(m.Purpose), m.Flags)
	b = append(b, m.Nonce[:]...)
	b = append(b, byte(len(m.Name)))
	return append(b, m.Name...)
}

// parseClientHello parses a client hello at the start of b and says how
// many bytes it took; with errShort, n is how many it needs (never more
// than maxHelloLen).
func parseClientHello(b []byte) (m clientHello, n int, err error) {
	n, err = parseHelloFrame(b, 0)
	if err != nil {
		return m, n, err
	}
	m.Version, m.Purpose, m.Flags = b[4], Purpose(b[5]), b[6]
	copy(m.Nonce[:], b[7:7+nonceLen])
	m.Name = string(b[helloFixed:n])
	return m, n, nil
}

// serverHello answers a client hello. With a status other than statusOK,
// Flags, Nonce, Name and MAC are zero.
type serverHello struct {
	Version byte
	Status  byte
	Flags   byte
	Nonce   [nonceLen]byte
	Name    string
	MAC     [macLen]byte
}

// appendMarshal appends the hello without its MAC: the part the MAC covers.
func (m *serverHello) appendMarshal(b []byte) []byte {
	b = append(b, magic...)
	b = append(b, m.Version, m.Status, m.Flags)
	b = append(b, m.Nonce[:]...)
	b = append(b, byte(len(m.Name)))
	return append(b, m.Name...)
}

func parseServerHello(b []byte) (m serverHello, n int, err error) {
	n, err = parseHelloFrame(b, macLen)
	if err != nil {
		return m, n, err
	}
	m.Version, m.Status, m.Flags = b[4], b[5], b[6]
	copy(m.Nonce[:], b[7:7+nonceLen])
	m.Name = string(b[helloFixed : n-macLen])
	copy(m.MAC[:], b[n-macLen:n])
	return m, n, nil
}

// parseHelloFrame checks the magic and the name and returns the length of
// a hello (either direction) with tail bytes after the name.
func parseHelloFrame(b []byte, tail int) (int, error) {
	if k := min(len(b), len(magic)); string(b[:k]) != magic[:k] {
		return 0, fmt.Errorf("%w: bad magic %q", ErrNotLink, b[:k])
	}
	if len(b) < helloFixed {
		return helloFixed, errShort
	}
	nameLen := int(b[helloFixed-1])
	if nameLen > MaxNameLen {
		return 0, fmt.Errorf("%w: name of %d bytes, at most %d", ErrHandshake, nameLen, MaxNameLen)
	}
	n := helloFixed + nameLen + tail
	if len(b) < n {
		return n, errShort
	}
	if err := checkName(string(b[helloFixed : helloFixed+nameLen])); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	return n, nil
}

// finish is the client's answer to the server hello.
type finish struct {
	Status byte // statusOK, or statusAuth: the server's MAC was wrong
	MAC    [macLen]byte
}

func (m *finish) appendMarshal(b []byte) []byte {
	b = append(b, m.Status)
	return append(b, m.MAC[:]...)
}

func parseFinish(b []byte) (m finish, n int, err error) {
	if len(b) < finishLen {
		return m, finishLen, errShort
	}
	m.Status = b[0]
	copy(m.MAC[:], b[1:finishLen])
	return m, finishLen, nil
}

// parseResult parses the server's last word: a status.
func parseResult(b []byte) (status byte, n int, err error) {
	if len(b) < resultLen {
		return 0, resultLen, errShort
	}
	return b[0], resultLen, nil
}

// readMsg reads one handshake message from br with parse, appending its
// bytes to transcript. It fails as soon as the bytes buffered cannot start
// a valid message (a garbage sender is not waited for).
func readMsg[M any](br *bufio.Reader, parse func([]byte) (M, int, error), transcript *[]byte) (M, error) {
	var zero M
	need := 1
	for {
		if _, err := br.Peek(need); err != nil {
			return zero, err
		}
		b, _ := br.Peek(br.Buffered())
		m, n, err := parse(b)
		if err == nil {
			if transcript != nil {
				*transcript = append(*transcript, b[:n]...)
			}
			br.Discard(n)
			return m, nil
		}
		if !errors.Is(err, errShort) {
			return zero, err
		}
		need = n
	}
}

// keySchedule derives the handshake MAC key and, once the transcript is
// complete, the session keys.
type keySchedule struct {
	key    Key
	macKey []byte
}

func newKeySchedule(k Key) keySchedule {
	mk, err := hkdf.Key(sha256.New, k[:], []byte(handshakeSalt), macKeyInfo, macLen)
	if err != nil {
		panic(err) // fixed, valid length
	}
	return keySchedule{key: k, macKey: mk}
}

// mac is the proof of the key by one side (label) over the transcript.
func (ks keySchedule) mac(label string, transcript []byte) [macLen]byte {
	h := hmac.New(sha256.New, ks.macKey)
	h.Write([]byte(label))
	h.Write(transcript)
	var m [macLen]byte
	h.Sum(m[:0])
	return m
}

// sessionKeys returns the client-to-server and server-to-client keys.
func (ks keySchedule) sessionKeys(transcript []byte) (c2s, s2c []byte) {
	th := sha256.Sum256(transcript)
	c2s, err := hkdf.Key(sha256.New, ks.key[:], th[:], clientKeyInfo, sessionKeyBytes)
	if err != nil {
		panic(err)
	}
	s2c, err = hkdf.Key(sha256.New, ks.key[:], th[:], serverKeyInfo, sessionKeyBytes)
	if err != nil {
		panic(err)
	}
	return c2s, s2c
}

func modeFlags(insecure bool) byte {
	if insecure {
		return flagInsecure
	}
	return 0
}

// clientHandshake runs the client side on nc; the caller sets deadlines and
// closes nc on error. Nothing but the handshake is sent before the server
// has proved it holds the key.
func clientHandshake(nc net.Conn, p Purpose, cfg *Config) (*Conn, error) {
	br := newReader(nc)
	ks := newKeySchedule(cfg.Key)
	hello := clientHello{Version: version, Purpose: p, Flags: modeFlags(cfg.Insecure), Name: cfg.Name}
	if _, err := rand.Read(hello.Nonce[:]); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	transcript := hello.appendMarshal(make([]byte, 0, 2*maxHelloLen))
	if _, err := nc.Write(transcript); err != nil {
		return nil, fmt.Errorf("%w: sending hello: %w", ErrHandshake, err)
	}
	sh, err := readMsg(br, parseServerHello, &transcript)
	if err != nil {
		return nil, readErr("server hello", err)
	}
	switch {
	case sh.Status == statusVersion:
		return nil, fmt.Errorf("%w: the peer speaks version %d, we speak %d", ErrVersion, sh.Version, version)
	case sh.Status == statusNoListener:
		return nil, ErrNoListener
	case sh.Status != statusOK:
		return nil, fmt.Errorf("%w: server hello status %d", ErrHandshake, sh.Status)
	case sh.Version != version:
		return nil, fmt.Errorf("%w: the peer answered version %d, we speak %d", ErrVersion, sh.Version, version)
	}
	transcript = transcript[:len(transcript)-macLen] // the MAC covers the rest
	want := ks.mac(serverMACLabel, transcript)
	if !hmac.Equal(sh.MAC[:], want[:]) {
		fin := finish{Status: statusAuth}
		nc.Write(fin.appendMarshal(nil)) // tell the peer why; it may be gone
		return nil, ErrAuth
	}
	fin := finish{Status: statusOK, MAC: ks.mac(clientMACLabel, transcript)}
	if _, err := nc.Write(fin.appendMarshal(nil)); err != nil {
		return nil, fmt.Errorf("%w: sending finish: %w", ErrHandshake, err)
	}
	status, err := readMsg(br, parseResult, nil)
	if err != nil {
		return nil, readErr("server result", err)
	}
	switch status {
	case statusOK:
	case statusAuth:
		return nil, fmt.Errorf("%w: it rejected our proof of the key", ErrAuth)
	default:
		return nil, fmt.Errorf("%w: result status %d", ErrHandshake, status)
	}
	c2s, s2c := ks.sessionKeys(transcript)
	insecure := cfg.Insecure && sh.Flags&flagInsecure != 0
	return newConn(nc, br, sh.Name, p, insecure, s2c, c2s)
}

// serverHandshake runs the server side on nc; accepts says whether a
// purpose has a listener. The caller sets deadlines and closes nc on error.
func serverHandshake(nc net.Conn, cfg *Config, accepts func(Purpose) bool) (*Conn, error) {
	br := newReader(nc)
	ks := newKeySchedule(cfg.Key)
	transcript := make([]byte, 0, 2*maxHelloLen)
	ch, err := readMsg(br, parseClientHello, &transcript)
	if err != nil {
		return nil, readErr("client hello", err)
	}
	sh := serverHello{Version: version}
	switch {
	case ch.Version != version:
		sh.Status = statusVersion
	case !accepts(ch.Purpose):
		sh.Status = statusNoListener
	}
	if sh.Status != statusOK {
		b := sh.appendMarshal(nil)
		nc.Write(append(b, make([]byte, macLen)...)) // best effort: we close next
		if sh.Status == statusVersion {
			return nil, fmt.Errorf("%w: the peer speaks version %d, we speak %d", ErrVersion, ch.Version, version)
		}
		return nil, fmt.Errorf("%w (%s)", ErrNoListener, ch.Purpose)
	}
	sh.Flags, sh.Name = modeFlags(cfg.Insecure), cfg.Name
	if _, err := rand.Read(sh.Nonce[:]); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	s1 := sh.appendMarshal(make([]byte, 0, maxHelloLen))
	transcript = append(transcript, s1...)
	mac := ks.mac(serverMACLabel, transcript)
	if _, err := nc.Write(append(s1, mac[:]...)); err != nil {
		return nil, fmt.Errorf("%w: sending server hello: %w", ErrHandshake, err)
	}
	fin, err := readMsg(br, parseFinish, nil)
	if err != nil {
		return nil, readErr("finish", err)
	}
	switch fin.Status {
	case statusOK:
	case statusAuth:
		return nil, fmt.Errorf("node %q: %w: it rejected our proof of the key", ch.Name, ErrAuth)
	default:
		return nil, fmt.Errorf("%w: finish status %d", ErrHandshake, fin.Status)
	}
	want := ks.mac(clientMACLabel, transcript)
	if !hmac.Equal(fin.MAC[:], want[:]) {
		nc.Write([]byte{statusAuth}) // tell the peer why; we close next
		return nil, fmt.Errorf("node %q: %w", ch.Name, ErrAuth)
	}
	if _, err := nc.Write([]byte{statusOK}); err != nil {
		return nil, fmt.Errorf("%w: sending result: %w", ErrHandshake, err)
	}
	c2s, s2c := ks.sessionKeys(transcript)
	insecure := cfg.Insecure && ch.Flags&flagInsecure != 0
	return newConn(nc, br, ch.Name, ch.Purpose, insecure, c2s, s2c)
}

// readErr describes a failure to read a handshake message.
func readErr(what string, err error) error {
	switch {
	case errors.Is(err, ErrNotLink), errors.Is(err, ErrHandshake):
		return err
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: the peer closed the connection before the %s", ErrHandshake, what)
	}
	return fmt.Errorf("%w: reading the %s: %w", ErrHandshake, what, err)
}
