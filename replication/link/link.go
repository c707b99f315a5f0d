package link

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"
)

// Purpose says what a connection carries; the Listener hands each
// connection to the net.Listener of its purpose.
type Purpose byte

// The purposes of links between nodes.
const (
	PurposeRaft        Purpose = 1 // raft RPCs (StreamLayer)
	PurposeReplication Purpose = 2 // the replication data path
	PurposeRPC         Purpose = 3 // internal requests between nodes
)

func (p Purpose) valid() bool { return p >= PurposeRaft && p <= PurposeRPC }

func (p Purpose) String() string {
	switch p {
	case PurposeRaft:
		return "raft"
	case PurposeReplication:
		return "replication"
	case PurposeRPC:
		return "rpc"
	}
	return fmt.Sprintf("purpose(%d)", byte(p))
}

// Limits.
const (
	// MaxNameLen bounds a node name in the handshake.
	MaxNameLen = 128
	// MaxFrame is the largest payload of one frame; larger writes are split.
	MaxFrame = 64 << 10
	// maxHandshakes bounds the connections in handshake on a Listener.
	maxHandshakes = 64
	// DefaultHandshakeTimeout is used when Config.HandshakeTimeout is zero.
	DefaultHandshakeTimeout = 5 * time.Second
)

// Config is what both ends of a link need.
type Config struct {
	// Key is the cluster key; the zero key is refused.
	Key Key
	// Name is this node's name: sent in the handshake, the peer's
	// Conn.Peer. At most MaxNameLen bytes of UTF-8.
	Name string
	// Insecure sends bytes raw after the handshake: the link is
	// authenticated at connect time only (see the package doc). The
	// connection is encrypted unless both sides set it.
	Insecure bool
	// HandshakeTimeout bounds a handshake on either side and, on the
	// server, the wait for a consumer to accept the connection.
	// Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Logger gets failed handshakes on the server side; nil means
	// slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	if c.Key == (Key{}) {
		return ErrNoKey
	}
	if err := checkName(c.Name); err != nil {
		return fmt.Errorf("link: node name %q: %w", c.Name, err)
	}
	return nil
}

func checkName(name string) error {
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, at most %d", errBadName, len(name), MaxNameLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: not UTF-8", errBadName)
	}
	return nil
}

// Errors, wrapped with the address, purpose or peer involved.
var (
	// ErrAuth: one side does not hold the same cluster key as the other.
	// Both sides get it (the one that detects it, and the one it rejects).
	ErrAuth = errors.New("peer failed cluster-key authentication (wrong or missing --cluster-key-file?)")
	// ErrFrameAuth: a frame failed authentication after the handshake; the
	// connection is closed.
	ErrFrameAuth = errors.New("frame failed authentication (tampered, corrupted, replayed or out of sequence)")
	// ErrFrameSize: a frame length out of bounds; the connection is closed.
	ErrFrameSize = errors.New("frame length out of bounds")
	// ErrNotLink: the peer does not speak this protocol.
	ErrNotLink = errors.New("not a tandem link")
	// ErrVersion: the peer speaks another version of the protocol.
	ErrVersion = errors.New("unsupported link protocol version")
	// ErrNoListener: the server accepts no connections of that purpose.
	ErrNoListener = errors.New("peer accepts no link of that purpose")
	// ErrHandshake: the peer broke off or garbled the handshake.
	ErrHandshake = errors.New("link handshake failed")
	// ErrNoKey: a Config without a cluster key.
	ErrNoKey = errors.New("link: no cluster key")

	errBadName = errors.New("invalid node name")
)
