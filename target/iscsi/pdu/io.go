package pdu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
)

// Errors returned by Reader. Each is wrapped with the values involved.
var (
	ErrHeaderDigest = errors.New("pdu: header digest mismatch")
	ErrDataDigest   = errors.New("pdu: data digest mismatch")
	ErrDataTooLong  = errors.New("pdu: data segment longer than negotiated")
	ErrMalformedAHS = errors.New("pdu: malformed additional header segment")
	ErrShortDataBuf = errors.New("pdu: destination length differs from data segment length")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C computes the iSCSI digest (CRC32C) of p.
func CRC32C(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

var zeroPad [4]byte

// Reader reads PDUs from a connection. It is not safe for concurrent use.
type Reader struct {
	R                    io.Reader
	HeaderDigest         bool
	DataDigest           bool
	MaxDataSegmentLength int // largest data segment accepted; 0 means 8192
	ahs                  [255 * 4]byte
	tail                 [8]byte
}

// ReadHeader reads the basic header segment, the additional header segments
// and the header digest. The returned AHS aliases the Reader's buffer and is
// valid until the next call. The caller must then call ReadData or
// DiscardData for the data segment.
func (r *Reader) ReadHeader(h *Header) (ahs []byte, err error) {
	if _, err := io.ReadFull(r.R, h[:]); err != nil {
		return nil, err
	}
	n := h.TotalAHSLength()
	ahs = r.ahs[:n]
	if n > 0 {
		if _, err := io.ReadFull(r.R, ahs); err != nil {
			return nil, fmt.Errorf("pdu: reading %d bytes of AHS: %w", n, unexpected(err))
		}
	}
	if r.HeaderDigest {
		if _, err := io.ReadFull(r.R, r.tail[:4]); err != nil {
			return nil, fmt.Errorf("pdu: reading header digest: %w", unexpected(err))
		}
		want := crc32.Update(CRC32C(h[:]), castagnoli, ahs)
		if got := le32(r.tail[:4]); got != want {
			return nil, fmt.Errorf("%w: got 0x%08x, computed 0x%08x", ErrHeaderDigest, got, want)
		}
	}
	max := r.MaxDataSegmentLength
	if max == 0 {
		max = 8192
	}
	if dsl := h.DataSegmentLength(); dsl > max {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrDataTooLong, dsl, max)
	}
	return ahs, nil
}

// ReadData reads the data segment of h into dst, whose length must equal the
// header's data segment length, and then the padding and data digest. On
// ErrDataDigest the stream is still in step: the caller may reject the PDU
// and carry on.
func (r *Reader) ReadData(h *Header, dst []byte) error {
	n := h.DataSegmentLength()
	if len(dst) != n {
		return fmt.Errorf("%w: %d, want %d", ErrShortDataBuf, len(dst), n)
	}
	if n == 0 {
		return nil
	}
	if _, err := io.ReadFull(r.R, dst); err != nil {
		return fmt.Errorf("pdu: reading %d bytes of data: %w", n, unexpected(err))
	}
	pad := Padding(n)
	tail := r.tail[:pad]
	if r.DataDigest {
		tail = r.tail[:pad+4]
	}
	if _, err := io.ReadFull(r.R, tail); err != nil {
		return fmt.Errorf("pdu: reading padding and digest: %w", unexpected(err))
	}
	if r.DataDigest {
		want := crc32.Update(CRC32C(dst), castagnoli, tail[:pad])
		if got := le32(tail[pad:]); got != want {
			return fmt.Errorf("%w: got 0x%08x, computed 0x%08x", ErrDataDigest, got, want)
		}
	}
	return nil
}

// DiscardData skips the data segment of h (and its padding and digest).
func (r *Reader) DiscardData(h *Header) error {
	n := h.DataSegmentLength()
	if n == 0 {
		return nil
	}
	n += Padding(n)
	if r.DataDigest {
		n += 4
	}
	if _, err := io.CopyN(io.Discard, r.R, int64(n)); err != nil {
		return fmt.Errorf("pdu: discarding %d bytes of data: %w", n, unexpected(err))
	}
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// iSCSI digests are sent least significant byte first (RFC 7143 §13.1 and
// the CRC32C conventions of RFC 3385 as used by every implementation).
func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// Writer writes PDUs to a connection, coalescing small ones in a buffer.
// A large data segment is not copied: it goes out with the buffered bytes
// in one vectored write (writev on a TCP connection). Writer is not safe
// for concurrent use; Flush sends what was buffered. The first write error
// sticks and is returned by every later call.
type Writer struct {
	Dst          io.Writer
	HeaderDigest bool
	DataDigest   bool
	buf          []byte
	tail         [8]byte
	err          error
}

const (
	// writerFlushAt is how many buffered bytes trigger a write.
	writerFlushAt = 64 << 10
	// writerDirect is the data segment size from which data is not copied
	// into the buffer.
	writerDirect = 16 << 10
)

// WritePDU sets h's data segment length to len(data) and writes the header,
// its digest, the data, its padding and its digest. AHS is not supported on
// the target-to-initiator direction except through WritePDUWithAHS.
func (w *Writer) WritePDU(h *Header, data []byte) error {
	return w.WritePDUWithAHS(h, nil, data)
}

// WritePDUWithAHS is WritePDU with additional header segments (len(ahs) a
// multiple of 4, at most 1020 bytes).
func (w *Writer) WritePDUWithAHS(h *Header, ahs, data []byte) error {
	if len(ahs)%4 != 0 || len(ahs) > 1020 {
		panic(fmt.Sprintf("pdu: AHS length %d", len(ahs)))
	}
	if w.err != nil {
		return w.err
	}
	h[4] = byte(len(ahs) / 4)
	h.SetDataSegmentLength(len(data))
	w.buf = append(w.buf, h[:]...)
	w.buf = append(w.buf, ahs...)
	if w.HeaderDigest {
		w.buf = binary.LittleEndian.AppendUint32(w.buf, crc32.Update(CRC32C(h[:]), castagnoli, ahs))
	}
	if len(data) == 0 {
		return w.flushIfFull()
	}
	pad := Padding(len(data))
	tail := append(w.tail[:0], zeroPad[:pad]...)
	if w.DataDigest {
		tail = binary.LittleEndian.AppendUint32(tail, crc32.Update(CRC32C(data), castagnoli, zeroPad[:pad]))
	}
	if len(data) < writerDirect {
		w.buf = append(w.buf, data...)
		w.buf = append(w.buf, tail...)
		return w.flushIfFull()
	}
	bufs := net.Buffers{w.buf, data, tail}
	_, w.err = bufs.WriteTo(w.Dst)
	w.buf = w.buf[:0]
	return w.err
}

// WriteHeaderFor writes and flushes h announcing a data segment of dataLen
// bytes that the caller then writes to Dst itself (with sendfile), followed
// by EndDataFor. A data digest cannot be added that way: it panics if
// DataDigest is set (a programmer error: callers check first).
func (w *Writer) WriteHeaderFor(h *Header, dataLen int) error {
	if w.DataDigest {
		panic("pdu: WriteHeaderFor with data digests on")
	}
	if w.err != nil {
		return w.err
	}
	h[4] = 0
	h.SetDataSegmentLength(dataLen)
	w.buf = append(w.buf, h[:]...)
	if w.HeaderDigest {
		w.buf = binary.LittleEndian.AppendUint32(w.buf, CRC32C(h[:]))
	}
	return w.Flush()
}

// ZeroFill writes n zero bytes of a data segment begun with
// WriteHeaderFor, in place of data the caller could not produce (a device
// that failed to read it), so that the segment keeps its announced length.
func (w *Writer) ZeroFill(n int) error {
	for n > 0 && w.err == nil {
		k := min(n, len(zeroFill))
		w.buf = append(w.buf, zeroFill[:k]...)
		n -= k
		if err := w.flushIfFull(); err != nil {
			return err
		}
	}
	return w.err
}

var zeroFill [16 << 10]byte

// EndDataFor completes a data segment of dataLen bytes the caller wrote
// itself after WriteHeaderFor: its padding to 4 bytes (buffered, sent
// before anything written next).
func (w *Writer) EndDataFor(dataLen int) error {
	if w.err != nil {
		return w.err
	}
	w.buf = append(w.buf, zeroPad[:Padding(dataLen)]...)
	return nil
}

func (w *Writer) flushIfFull() error {
	if len(w.buf) >= writerFlushAt {
		return w.Flush()
	}
	return nil
}

// Flush sends buffered PDUs.
func (w *Writer) Flush() error {
	if w.err != nil || len(w.buf) == 0 {
		return w.err
	}
	_, w.err = w.Dst.Write(w.buf)
	w.buf = w.buf[:0]
	return w.err
}

// AHS types (§11.2.1.2).
const (
	AHSExtendedCDB        = 1
	AHSBidiReadDataLength = 2
)

// AHS is one additional header segment.
type AHS struct {
	Type uint8
	// Data is the segment's content after the type-specific byte, aliasing
	// the input.
	Data []byte
}

// ParseAHS splits the additional header segments of a PDU.
func ParseAHS(b []byte) ([]AHS, error) {
	var out []AHS
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformedAHS, len(b))
		}
		n := int(be16(b)) // length of the AHS-specific data, including the reserved byte
		if n == 0 {
			return nil, fmt.Errorf("%w: zero length", ErrMalformedAHS)
		}
		total := 3 + n
		total += Padding(total)
		if total > len(b) {
			return nil, fmt.Errorf("%w: length %d exceeds remaining %d bytes", ErrMalformedAHS, n, len(b)-3)
		}
		out = append(out, AHS{Type: b[2], Data: b[4 : 3+n]})
		b = b[total:]
	}
	return out, nil
}
