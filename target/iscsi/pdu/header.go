// Package pdu encodes and decodes iSCSI protocol data units (RFC 7143 §11):
// the 48-byte basic header segment, additional header segments, data segments
// with their padding, and CRC32C header and data digests.
//
// Each opcode has its own type with Unmarshal (from a Header) and Marshal
// (into a Header), so the connection code never touches raw offsets. Reading is
// split into ReadHeader and ReadData so that the caller can choose where data
// lands (a Data-Out goes straight into its command's buffer, with no copy).
// Nothing here panics on input: every malformed PDU is an error.
package pdu

import (
	"encoding/binary"
	"fmt"
)

// BHSLen is the length of the basic header segment.
const BHSLen = 48

// MaxDataSegmentLength is the largest data segment the 24-bit field can carry.
const MaxDataSegmentLength = 1<<24 - 1

// Opcode is the six-bit iSCSI opcode.
type Opcode uint8

// Initiator opcodes.
const (
	OpNOPOut      Opcode = 0x00
	OpSCSICommand Opcode = 0x01
	OpTaskMgmtReq Opcode = 0x02
	OpLoginReq    Opcode = 0x03
	OpTextReq     Opcode = 0x04
	OpDataOut     Opcode = 0x05
	OpLogoutReq   Opcode = 0x06
	OpSNACKReq    Opcode = 0x10
)

// Target opcodes.
const (
	OpNOPIn        Opcode = 0x20
	OpSCSIResponse Opcode = 0x21
	OpTaskMgmtResp Opcode = 0x22
	OpLoginResp    Opcode = 0x23
	OpTextResp     Opcode = 0x24
	OpDataIn       Opcode = 0x25
	OpLogoutResp   Opcode = 0x26
	OpR2T          Opcode = 0x31
	OpAsyncMsg     Opcode = 0x32
	OpReject       Opcode = 0x3f
)

var opNames = map[Opcode]string{
	OpNOPOut: "NOP-Out", OpSCSICommand: "SCSI Command", OpTaskMgmtReq: "Task Management Request",
	OpLoginReq: "Login Request", OpTextReq: "Text Request", OpDataOut: "SCSI Data-Out",
	OpLogoutReq: "Logout Request", OpSNACKReq: "SNACK Request",
	OpNOPIn: "NOP-In", OpSCSIResponse: "SCSI Response", OpTaskMgmtResp: "Task Management Response",
	OpLoginResp: "Login Response", OpTextResp: "Text Response", OpDataIn: "SCSI Data-In",
	OpLogoutResp: "Logout Response", OpR2T: "R2T", OpAsyncMsg: "Asynchronous Message", OpReject: "Reject",
}

func (o Opcode) String() string {
	if s, ok := opNames[o]; ok {
		return s
	}
	return fmt.Sprintf("opcode 0x%02x", uint8(o))
}

// Header is a basic header segment. Fields common to all opcodes have
// accessors; opcode-specific fields are read and written by the message types.
type Header [BHSLen]byte

// Opcode returns the header's opcode.
func (h *Header) Opcode() Opcode { return Opcode(h[0] & 0x3f) }

// Immediate reports the I bit (immediate delivery).
func (h *Header) Immediate() bool { return h[0]&0x40 != 0 }

// Final reports the F bit, which most opcodes keep in bit 7 of byte 1.
func (h *Header) Final() bool { return h[1]&0x80 != 0 }

// TotalAHSLength is the length of the additional header segments in bytes.
func (h *Header) TotalAHSLength() int { return int(h[4]) * 4 }

// DataSegmentLength is the unpadded length of the data segment.
func (h *Header) DataSegmentLength() int {
	return int(h[5])<<16 | int(h[6])<<8 | int(h[7])
}

// SetDataSegmentLength sets the data segment length; n must fit 24 bits.
func (h *Header) SetDataSegmentLength(n int) {
	if n < 0 || n > MaxDataSegmentLength {
		panic(fmt.Sprintf("pdu: data segment length %d out of range", n))
	}
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
}

// ITT is the initiator task tag.
func (h *Header) ITT() uint32 { return be32(h[16:]) }

// LUN returns bytes 8..15 as a 64-bit LUN field.
func (h *Header) LUN() uint64 { return binary.BigEndian.Uint64(h[8:]) }

func be32(b []byte) uint32       { return binary.BigEndian.Uint32(b) }
func put32(b []byte, v uint32)   { binary.BigEndian.PutUint32(b, v) }
func be16(b []byte) uint16       { return binary.BigEndian.Uint16(b) }
func put16(b []byte, v uint16)   { binary.BigEndian.PutUint16(b, v) }
func be64(b []byte) uint64       { return binary.BigEndian.Uint64(b) }
func put64(b []byte, v uint64)   { binary.BigEndian.PutUint64(b, v) }
func bit(b byte, mask byte) bool { return b&mask != 0 }
func setIf(c bool, mask byte) byte {
	if c {
		return mask
	}
	return 0
}

// start clears h and writes the opcode and immediate bit.
func (h *Header) start(op Opcode, immediate bool) {
	*h = Header{}
	h[0] = byte(op) | setIf(immediate, 0x40)
}

// Padding returns the number of pad bytes after a data segment of n bytes.
func Padding(n int) int { return (4 - n&3) & 3 }
