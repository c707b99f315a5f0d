package replication

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// The wire format. Every message is a fixed 56-byte header followed by a
// body of BodyLen bytes. The body starts with TextLen bytes of text (the
// volume ID in a request, the error message in a reply), then the kind's
// payload (a Write's data, a Barrier's operation, a reply's checksums).
//
//	 0  2  magic "TR"
//	 2  1  version (1)
//	 3  1  kind
//	 4  1  flags (bit 0: FUA, Write only)
//	 5  1  status (replies only)
//	 6  2  text length
//	 8  4  body length (text included)
//	12  4  reserved, zero
//	16  8  request ID
//	24  8  epoch (requests; zero in replies)
//	32  8  A: offset (Write, Unmap, Checksums), size (Hello reply)
//	40  8  B: length (Unmap, Checksums), the replica's epoch (reply)
//	48  8  C: region size (Checksums)
//
// Every field a kind does not use must be zero, so each message has one
// encoding and a decoder that accepts it re-encodes it byte for byte.
const (
	// HeaderLen is the length of the fixed header.
	HeaderLen = 56
	// MaxVolumeIDLen bounds a request's volume ID.
	MaxVolumeIDLen = 255
	// MaxMessageLen bounds a reply's error message.
	MaxMessageLen = 1024
	// MaxWriteData bounds a Write's data; the Mirror splits larger writes.
	MaxWriteData = 32 << 20
	// MaxOpLen bounds a Barrier's operation.
	MaxOpLen = 64 << 10
	// MaxChecksums bounds the regions one Checksums request covers.
	MaxChecksums = 4096
	// MaxChecksumRegion bounds a Checksums request's region size (the
	// replica reads one region at a time into a buffer of that size).
	MaxChecksumRegion = 32 << 20

	wireMagic   = "TR"
	wireVersion = 1
	flagFUA     = 1
)

// Kind says what a message is.
type Kind uint8

// Message kinds.
const (
	KindHello     Kind = 1 // open a stream for a volume at an epoch
	KindWrite     Kind = 2
	KindUnmap     Kind = 3
	KindFlush     Kind = 4
	KindBarrier   Kind = 5 // an opaque operation applied in stream order
	KindChecksums Kind = 6 // one SHA-256 per region, for verify
	KindReply     Kind = 7
)

func (k Kind) String() string {
	switch k {
	case KindHello:
		return "hello"
	case KindWrite:
		return "write"
	case KindUnmap:
		return "unmap"
	case KindFlush:
		return "flush"
	case KindBarrier:
		return "barrier"
	case KindChecksums:
		return "checksums"
	case KindReply:
		return "reply"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// Status is a reply's outcome.
type Status uint8

// Reply statuses.
const (
	StatusOK         Status = 0
	StatusStaleEpoch Status = 1 // the replica accepted a newer epoch: the sender is deposed
	StatusNoCopy     Status = 2 // the replica holds no copy of the volume
	StatusMedium     Status = 3
	StatusNoSpace    Status = 4
	StatusOutOfRange Status = 5
	StatusProtocol   Status = 6 // the request was malformed; the replica closes the connection
	StatusFailed     Status = 7 // any other failure
	maxStatus               = StatusFailed
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusStaleEpoch:
		return "stale epoch"
	case StatusNoCopy:
		return "no such copy"
	case StatusMedium:
		return "medium error"
	case StatusNoSpace:
		return "no space"
	case StatusOutOfRange:
		return "out of range"
	case StatusProtocol:
		return "protocol error"
	case StatusFailed:
		return "failed"
	}
	return fmt.Sprintf("status %d", uint8(s))
}

// Sum is the checksum of one region.
type Sum [sha256.Size]byte

// Message is one decoded message.
type Message interface {
	// AppendMarshal appends the message's encoding to b.
	AppendMarshal(b []byte) []byte
	header() Header
}

// Hello opens a stream for VolumeID at Epoch. The replica persists the
// epoch if it is newer than the one it accepted, refuses it if older, and
// answers its copy's size and its accepted epoch. It fences every earlier
// stream for the volume: none of their messages is applied after it.
type Hello struct {
	ID       uint64
	VolumeID string
	Epoch    uint64
}

// Write stores Data at Off.
type Write struct {
	ID       uint64
	VolumeID string
	Epoch    uint64
	Off      uint64
	FUA      bool
	Data     []byte // aliases the decoder's buffer
}

// Unmap deallocates Len bytes at Off.
type Unmap struct {
	ID       uint64
	VolumeID string
	Epoch    uint64
	Off, Len uint64
}

// Flush makes every completed write durable.
type Flush struct {
	ID       uint64
	VolumeID string
	Epoch    uint64
}

// Barrier applies Op (snapshot, resize, revert...) to the copy.
type Barrier struct {
	ID       uint64
	VolumeID string
	Epoch    uint64
	Op       []byte // aliases the decoder's buffer
}

// Checksums asks for the SHA-256 of each RegionSize bytes of [Off, Off+Len)
// (the last region may be shorter).
type Checksums struct {
	ID         uint64
	VolumeID   string
	Epoch      uint64
	Off, Len   uint64
	RegionSize uint64
}

// Reply answers the request with the same ID.
type Reply struct {
	ID      uint64
	Status  Status
	Message string // why, when Status is not OK
	Size    uint64 // Hello: the copy's size
	Epoch   uint64 // Hello, and a StaleEpoch reply: the replica's accepted epoch
	Sums    []Sum  // Checksums
}

// Header is a decoded fixed header.
type Header struct {
	Kind    Kind
	Flags   uint8
	Status  Status
	TextLen uint16
	BodyLen uint32
	ID      uint64
	Epoch   uint64
	A, B, C uint64
}

// Errors the decoder returns, wrapped with detail.
var (
	// ErrMalformed: the bytes are not a valid message.
	ErrMalformed = errors.New("replication: malformed message")
	// ErrTooLong: a length in the header is over its bound.
	ErrTooLong = errors.New("replication: message too long")
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func (h *Header) appendTo(b []byte) []byte {
	b = append(b, wireMagic[0], wireMagic[1], wireVersion, byte(h.Kind), h.Flags, byte(h.Status))
	b = binary.BigEndian.AppendUint16(b, h.TextLen)
	b = binary.BigEndian.AppendUint32(b, h.BodyLen)
	b = binary.BigEndian.AppendUint32(b, 0)
	for _, v := range [...]uint64{h.ID, h.Epoch, h.A, h.B, h.C} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	return b
}

// maxBody is the largest body a kind may have.
func maxBody(k Kind) int {
	switch k {
	case KindWrite:
		return MaxVolumeIDLen + MaxWriteData
	case KindBarrier:
		return MaxVolumeIDLen + MaxOpLen
	case KindReply:
		return MaxMessageLen + MaxChecksums*sha256.Size
	}
	return MaxVolumeIDLen
}

// ParseHeader decodes and checks the fixed header in b[:HeaderLen]: its
// lengths are within their bounds before anyone allocates a body.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, malformed("header of %d bytes, want %d", len(b), HeaderLen)
	}
	if string(b[:2]) != wireMagic || b[2] != wireVersion {
		return Header{}, malformed("magic/version % x", b[:3])
	}
	h := Header{
		Kind: Kind(b[3]), Flags: b[4], Status: Status(b[5]),
		TextLen: binary.BigEndian.Uint16(b[6:]), BodyLen: binary.BigEndian.Uint32(b[8:]),
		ID: binary.BigEndian.Uint64(b[16:]), Epoch: binary.BigEndian.Uint64(b[24:]),
		A: binary.BigEndian.Uint64(b[32:]), B: binary.BigEndian.Uint64(b[40:]), C: binary.BigEndian.Uint64(b[48:]),
	}
	if binary.BigEndian.Uint32(b[12:]) != 0 {
		return Header{}, malformed("reserved bytes set")
	}
	if h.Kind < KindHello || h.Kind > KindReply {
		return Header{}, malformed("unknown kind %d", b[3])
	}
	if int64(h.BodyLen) > int64(maxBody(h.Kind)) {
		return Header{}, fmt.Errorf("%w: %v body of %d bytes, limit %d", ErrTooLong, h.Kind, h.BodyLen, maxBody(h.Kind))
	}
	if uint32(h.TextLen) > h.BodyLen {
		return Header{}, malformed("text of %d bytes in a body of %d", h.TextLen, h.BodyLen)
	}
	if h.Kind == KindReply {
		if h.TextLen > MaxMessageLen {
			return Header{}, fmt.Errorf("%w: reply message of %d bytes", ErrTooLong, h.TextLen)
		}
		if h.Status > maxStatus {
			return Header{}, malformed("unknown status %d", h.Status)
		}
		if (h.BodyLen-uint32(h.TextLen))%sha256.Size != 0 {
			return Header{}, malformed("checksums of %d bytes", h.BodyLen-uint32(h.TextLen))
		}
		if h.Flags != 0 || h.C != 0 || h.Epoch != 0 {
			return Header{}, malformed("reply with flags, epoch or C set")
		}
		return h, nil
	}
	// Requests.
	if h.TextLen == 0 || h.TextLen > MaxVolumeIDLen {
		return Header{}, malformed("volume ID of %d bytes", h.TextLen)
	}
	if h.Status != 0 {
		return Header{}, malformed("%v with a status", h.Kind)
	}
	if h.Flags&^flagFUA != 0 || h.Flags != 0 && h.Kind != KindWrite {
		return Header{}, malformed("%v with flags 0x%x", h.Kind, h.Flags)
	}
	payload := h.BodyLen - uint32(h.TextLen)
	switch h.Kind {
	case KindHello, KindFlush, KindBarrier:
		if h.A != 0 || h.B != 0 || h.C != 0 {
			return Header{}, malformed("%v with offsets set", h.Kind)
		}
		if h.Kind == KindBarrier && payload == 0 {
			return Header{}, malformed("empty barrier")
		}
		if h.Kind != KindBarrier && payload != 0 {
			return Header{}, malformed("%v with %d bytes of payload", h.Kind, payload)
		}
	case KindWrite:
		if h.B != 0 || h.C != 0 {
			return Header{}, malformed("write with B or C set")
		}
		if payload == 0 || !fitsInt64(h.A, uint64(payload)) {
			return Header{}, malformed("write of %d bytes at %d", payload, h.A)
		}
	case KindUnmap:
		if h.C != 0 || payload != 0 {
			return Header{}, malformed("unmap with C or payload set")
		}
		if h.B == 0 || !fitsInt64(h.A, h.B) {
			return Header{}, malformed("unmap of %d bytes at %d", h.B, h.A)
		}
	case KindChecksums:
		if payload != 0 {
			return Header{}, malformed("checksums request with payload")
		}
		if h.B == 0 || !fitsInt64(h.A, h.B) || h.C == 0 || h.C > MaxChecksumRegion {
			return Header{}, malformed("checksums of %d bytes at %d in regions of %d", h.B, h.A, h.C)
		}
		if n := (h.B-1)/h.C + 1; n > MaxChecksums {
			return Header{}, fmt.Errorf("%w: %d checksums, limit %d", ErrTooLong, n, MaxChecksums)
		}
	}
	return h, nil
}

// fitsInt64 reports whether [off, off+n) is a range of int64 offsets.
func fitsInt64(off, n uint64) bool {
	return off <= math.MaxInt64 && n <= math.MaxInt64-off
}

// ParseBody decodes the message h heads from its body (len(body) ==
// h.BodyLen). Write.Data and Barrier.Op alias body.
func ParseBody(h Header, body []byte) (Message, error) {
	if len(body) != int(h.BodyLen) {
		return nil, malformed("body of %d bytes, header says %d", len(body), h.BodyLen)
	}
	text, payload := string(body[:h.TextLen]), body[h.TextLen:]
	switch h.Kind {
	case KindHello:
		return &Hello{ID: h.ID, VolumeID: text, Epoch: h.Epoch}, nil
	case KindWrite:
		return &Write{ID: h.ID, VolumeID: text, Epoch: h.Epoch, Off: h.A, FUA: h.Flags&flagFUA != 0, Data: payload}, nil
	case KindUnmap:
		return &Unmap{ID: h.ID, VolumeID: text, Epoch: h.Epoch, Off: h.A, Len: h.B}, nil
	case KindFlush:
		return &Flush{ID: h.ID, VolumeID: text, Epoch: h.Epoch}, nil
	case KindBarrier:
		return &Barrier{ID: h.ID, VolumeID: text, Epoch: h.Epoch, Op: payload}, nil
	case KindChecksums:
		return &Checksums{ID: h.ID, VolumeID: text, Epoch: h.Epoch, Off: h.A, Len: h.B, RegionSize: h.C}, nil
	case KindReply:
		r := &Reply{ID: h.ID, Status: h.Status, Message: text, Size: h.A, Epoch: h.B}
		if n := len(payload) / sha256.Size; n > 0 {
			r.Sums = make([]Sum, n)
			for i := range r.Sums {
				copy(r.Sums[i][:], payload[i*sha256.Size:])
			}
		}
		return r, nil
	}
	return nil, malformed("unknown kind %d", h.Kind)
}

// Parse decodes the message at the start of p and returns it with the
// number of bytes it took.
func Parse(p []byte) (Message, int, error) {
	h, err := ParseHeader(p)
	if err != nil {
		return nil, 0, err
	}
	end := HeaderLen + int(h.BodyLen)
	if len(p) < end {
		return nil, 0, malformed("message of %d bytes, have %d", end, len(p))
	}
	m, err := ParseBody(h, p[HeaderLen:end])
	if err != nil {
		return nil, 0, err
	}
	return m, end, nil
}

func requestHeader(k Kind, id uint64, vol string, epoch uint64, payload int) Header {
	return Header{Kind: k, TextLen: uint16(len(vol)), BodyLen: uint32(len(vol) + payload), ID: id, Epoch: epoch}
}

func (m *Hello) header() Header { return requestHeader(KindHello, m.ID, m.VolumeID, m.Epoch, 0) }

// AppendMarshal appends the encoded message to b.
func (m *Hello) AppendMarshal(b []byte) []byte {
	h := m.header()
	return append(h.appendTo(b), m.VolumeID...)
}

func (m *Write) header() Header {
	h := requestHeader(KindWrite, m.ID, m.VolumeID, m.Epoch, len(m.Data))
	h.A = m.Off
	if m.FUA {
		h.Flags = flagFUA
	}
	return h
}

// AppendHeader appends the header and volume ID, everything but the data,
// so that a writer can send the data from the caller's buffer.
func (m *Write) AppendHeader(b []byte) []byte {
	h := m.header()
	return append(h.appendTo(b), m.VolumeID...)
}

// AppendMarshal appends the encoded message to b.
func (m *Write) AppendMarshal(b []byte) []byte { return append(m.AppendHeader(b), m.Data...) }

func (m *Unmap) header() Header {
	h := requestHeader(KindUnmap, m.ID, m.VolumeID, m.Epoch, 0)
	h.A, h.B = m.Off, m.Len
	return h
}

// AppendMarshal appends the encoded message to b.
func (m *Unmap) AppendMarshal(b []byte) []byte {
	h := m.header()
	return append(h.appendTo(b), m.VolumeID...)
}

func (m *Flush) header() Header { return requestHeader(KindFlush, m.ID, m.VolumeID, m.Epoch, 0) }

// AppendMarshal appends the encoded message to b.
func (m *Flush) AppendMarshal(b []byte) []byte {
	h := m.header()
	return append(h.appendTo(b), m.VolumeID...)
}

func (m *Barrier) header() Header {
	return requestHeader(KindBarrier, m.ID, m.VolumeID, m.Epoch, len(m.Op))
}

// AppendMarshal appends the encoded message to b.
func (m *Barrier) AppendMarshal(b []byte) []byte {
	h := m.header()
	return append(append(h.appendTo(b), m.VolumeID...), m.Op...)
}

func (m *Checksums) header() Header {
	h := requestHeader(KindChecksums, m.ID, m.VolumeID, m.Epoch, 0)
	h.A, h.B, h.C = m.Off, m.Len, m.RegionSize
	return h
}

// AppendMarshal appends the encoded message to b.
func (m *Checksums) AppendMarshal(b []byte) []byte {
	h := m.header()
	return append(h.appendTo(b), m.VolumeID...)
}

func (m *Reply) header() Header {
	return Header{Kind: KindReply, Status: m.Status, TextLen: uint16(len(m.Message)),
		BodyLen: uint32(len(m.Message) + len(m.Sums)*sha256.Size), ID: m.ID, A: m.Size, B: m.Epoch}
}

// AppendMarshal appends the encoded message to b. A message longer than
// MaxMessageLen is cut.
func (m *Reply) AppendMarshal(b []byte) []byte {
	if len(m.Message) > MaxMessageLen {
		c := *m
		c.Message = c.Message[:MaxMessageLen]
		m = &c
	}
	h := m.header()
	b = append(h.appendTo(b), m.Message...)
	for i := range m.Sums {
		b = append(b, m.Sums[i][:]...)
	}
	return b
}

// messageReader reads messages from a stream. The body buffer is reused:
// a message's Data and Op are valid until the next read.
type messageReader struct {
	r    *bufio.Reader
	hdr  [HeaderLen]byte
	body []byte
}

// readHeader reads and checks the next fixed header.
func (mr *messageReader) readHeader() (Header, error) {
	if _, err := io.ReadFull(mr.r, mr.hdr[:]); err != nil {
		return Header{}, err
	}
	return ParseHeader(mr.hdr[:])
}

// readBody reads h's body into dst (len h.BodyLen) and decodes it.
func (mr *messageReader) readBody(h Header, dst []byte) (Message, error) {
	if _, err := io.ReadFull(mr.r, dst); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("replication: reading %d bytes of %v body: %w", len(dst), h.Kind, err)
	}
	return ParseBody(h, dst)
}

// read reads the next message into the reader's own buffer.
func (mr *messageReader) read() (Message, error) {
	h, err := mr.readHeader()
	if err != nil {
		return nil, err
	}
	if cap(mr.body) < int(h.BodyLen) {
		mr.body = make([]byte, h.BodyLen)
	}
	return mr.readBody(h, mr.body[:h.BodyLen])
}
