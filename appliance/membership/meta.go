package membership

import (
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"strconv"

	"github.com/hashicorp/memberlist"
)

// Roles a node can have.
const (
	RoleData    = "data"    // holds volume copies and serves initiators
	RoleWitness = "witness" // raft voter without data
)

// Meta is what a node tells the others about itself, gossiped as
// memberlist's node metadata. Encoded, it must fit memberlist.MetaMaxSize
// (512 bytes).
type Meta struct {
	Role          string // RoleData or RoleWitness
	Link          string // host:port of the authenticated link listener (raft, replication, rpc); "" if none
	Portal        string // iSCSI portal host:port; "" if none
	API           string // admin API host:port; "" if none
	Cluster       string // raft cluster ID; "" while the node belongs to none
	CapacityBytes int64  // bytes the node can hold
	FreeBytes     int64  // of which free, <= CapacityBytes
}

// Limits of Meta's fields.
const (
	maxAddrLen    = 255 // a host:port
	maxClusterLen = 64
)

// metaVersion is the first byte of encoded Meta. A later version may append
// fields: a decoder ignores bytes after the fields it knows, so nodes of
// both versions can share a cluster.
const metaVersion = 1

// Validate says what is wrong with m, if anything.
func (m Meta) Validate() error {
	if m.Role != RoleData && m.Role != RoleWitness {
		return fmt.Errorf("%w: role %q is neither %q nor %q", ErrInvalidMeta, m.Role, RoleData, RoleWitness)
	}
	for _, a := range []struct{ what, addr string }{{"link", m.Link}, {"portal", m.Portal}, {"API", m.API}} {
		if err := validAddr(a.addr); err != nil {
			return fmt.Errorf("%w: %s address %q: %v", ErrInvalidMeta, a.what, a.addr, err)
		}
	}
	if len(m.Cluster) > maxClusterLen || !printable(m.Cluster) {
		return fmt.Errorf("%w: cluster ID %q: want at most %d printable ASCII characters", ErrInvalidMeta, m.Cluster, maxClusterLen)
	}
	if m.CapacityBytes < 0 || m.FreeBytes < 0 || m.FreeBytes > m.CapacityBytes {
		return fmt.Errorf("%w: free %d of capacity %d bytes: want 0 <= free <= capacity", ErrInvalidMeta, m.FreeBytes, m.CapacityBytes)
	}
	return nil
}

// validAddr accepts "" or host:port with a non-empty host and a port in
// 1..65535. It resolves nothing.
func validAddr(a string) error {
	if a == "" {
		return nil
	}
	if len(a) > maxAddrLen || !printable(a) {
		return fmt.Errorf("want at most %d printable ASCII characters", maxAddrLen)
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return err
	}
	if host == "" {
		return fmt.Errorf("no host")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("port %q is not in 1..65535", port)
	}
	return nil
}

// printable reports whether s is ASCII without spaces or control characters.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// marshal validates m and encodes it:
//
//	version (1 byte), then Role, Link, Portal, API, Cluster (each a uvarint
//	length and the bytes), then CapacityBytes, FreeBytes (uvarints)
func (m Meta) marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b := []byte{metaVersion}
	for _, s := range []string{m.Role, m.Link, m.Portal, m.API, m.Cluster} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(m.CapacityBytes))
	b = binary.AppendUvarint(b, uint64(m.FreeBytes))
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, the limit is %d", ErrMetaTooLarge, len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

// parseMeta decodes and validates metadata received from the network.
func parseMeta(p []byte) (Meta, error) {
	if len(p) > memberlist.MetaMaxSize {
		return Meta{}, fmt.Errorf("%w: %d bytes, the limit is %d", ErrMetaTooLarge, len(p), memberlist.MetaMaxSize)
	}
	if len(p) == 0 {
		return Meta{}, fmt.Errorf("%w: empty", ErrInvalidMeta)
	}
	if p[0] != metaVersion {
		return Meta{}, fmt.Errorf("%w: version %d, want %d", ErrInvalidMeta, p[0], metaVersion)
	}
	d := decoder{p: p[1:]}
	var m Meta
	m.Role = d.string("role", maxAddrLen)
	m.Link = d.string("link", maxAddrLen)
	m.Portal = d.string("portal", maxAddrLen)
	m.API = d.string("API", maxAddrLen)
	m.Cluster = d.string("cluster ID", maxClusterLen)
	m.CapacityBytes = d.int64("capacity")
	m.FreeBytes = d.int64("free")
	if d.err != nil {
		return Meta{}, fmt.Errorf("%w: %v", ErrInvalidMeta, d.err)
	}
	// Bytes after the known fields belong to a later version.
	if err := m.Validate(); err != nil {
		return Meta{}, err
	}
	return m, nil
}

// decoder reads uvarint-framed fields; the first error sticks and makes
// every later read return a zero value.
type decoder struct {
	p   []byte
	err error
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.p)
	if n <= 0 {
		d.err = fmt.Errorf("%s: truncated or overlong length", what)
		return 0
	}
	d.p = d.p[n:]
	return v
}

func (d *decoder) string(what string, limit int) string {
	n := d.uvarint(what)
	if d.err != nil {
		return ""
	}
	if n > uint64(limit) || n > uint64(len(d.p)) {
		d.err = fmt.Errorf("%s: length %d, limit %d, %d bytes left", what, n, limit, len(d.p))
		return ""
	}
	s := string(d.p[:n])
	d.p = d.p[n:]
	return s
}

func (d *decoder) int64(what string) int64 {
	v := d.uvarint(what)
	if d.err == nil && v > math.MaxInt64 {
		d.err = fmt.Errorf("%s: %d overflows int64", what, v)
	}
	return int64(v)
}
