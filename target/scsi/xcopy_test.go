package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
)

// locator is a CopyLocator over a fixed set of logical units.
type locator map[[16]byte]*LogicalUnit

func (l locator) LocateLU(naa [16]byte) *LogicalUnit { return l[naa] }

// xcopyParams builds an EXTENDED COPY parameter list: one identification
// CSCD descriptor per NAA, then block-to-block segments.
func xcopyParams(naas [][16]byte, segs [][5]uint64) []byte {
	p := make([]byte, 16)
	for _, naa := range naas {
		d := make([]byte, 32)
		d[0] = 0xe4
		d[4], d[5], d[7] = 1, 3, 16 // binary, LU association, NAA, 16 bytes
		copy(d[8:], naa[:])
		d[30] = 2 // block length 512
		p = append(p, d...)
	}
	tdl := len(p) - 16
	for _, s := range segs { // src index, dst index, blocks, src LBA, dst LBA
		d := make([]byte, 28)
		d[0] = 0x02
		binary.BigEndian.PutUint16(d[2:], 24)
		binary.BigEndian.PutUint16(d[4:], uint16(s[0]))
		binary.BigEndian.PutUint16(d[6:], uint16(s[1]))
		binary.BigEndian.PutUint16(d[10:], uint16(s[2]))
		binary.BigEndian.PutUint64(d[12:], s[3])
		binary.BigEndian.PutUint64(d[20:], s[4])
		p = append(p, d...)
	}
	p[0] = 7 // list identifier
	binary.BigEndian.PutUint16(p[2:], uint16(tdl))
	binary.BigEndian.PutUint32(p[8:], uint32(len(p)-16-tdl))
	return p
}

func xcopyCDB(n int) []byte {
	c := make([]byte, 16)
	c[0] = 0x83
	binary.BigEndian.PutUint32(c[10:], uint32(n))
	return c
}

func TestExtendedCopy(t *testing.T) {
	devA, devB := newMem(1<<20), newMem(1<<20)
	naaA, naaB := [16]byte{0x6a, 0xa}, [16]byte{0x6a, 0xb}
	loc := locator{}
	luA, _ := NewLogicalUnit(LUConfig{Device: devA, NAA: naaA, Copy: loc})
	luB, _ := NewLogicalUnit(LUConfig{Device: devB, NAA: naaB, Copy: loc})
	loc[naaA], loc[naaB] = luA, luB
	tg, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: luA}})
	tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: make([]byte, 6)})
	for i := range devA.data[:64*512] {
		devA.data[i] = byte(i/512 + 1)
	}
	run := func(p []byte) Result {
		return tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: xcopyCDB(len(p)), DataOut: p, ExpectedLength: uint32(len(p))})
	}
	// Within A: blocks 0..15 to 100..115; from A to B: blocks 16..47 to 0..31.
	if r := run(xcopyParams([][16]byte{naaA, naaB}, [][5]uint64{{0, 0, 16, 0, 100}, {0, 1, 32, 16, 0}})); r.Status != StatusGood {
		k, a := senseOf(r)
		t.Fatalf("copy: status %#x sense %x/%04x", r.Status, k, a)
	}
	if !bytes.Equal(devA.data[100*512:116*512], devA.data[:16*512]) {
		t.Error("copy within the volume did not land")
	}
	if !bytes.Equal(devB.data[:32*512], devA.data[16*512:48*512]) {
		t.Error("copy to the other volume did not land")
	}
	// RECEIVE COPY RESULTS for list 7: completed, 2 segments, 48 blocks.
	r := tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: []byte{0x84, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0}})
	if r.Status != StatusGood || r.Data[4] != 1 || binary.BigEndian.Uint16(r.Data[5:]) != 2 || binary.BigEndian.Uint32(r.Data[8:]) != 48*512 {
		t.Fatalf("copy status: %#x % x", r.Status, r.Data)
	}

	many := make([][16]byte, xcopyMaxCSCD+1)
	for i := range many {
		many[i] = naaA
	}
	manySegs := make([][5]uint64, xcopyMaxSegments+1)
	unsupported := xcopyParams([][16]byte{naaA}, [][5]uint64{{0, 0, 1, 0, 1}})
	unsupported[16] = 0xe5
	badSeg := xcopyParams([][16]byte{naaA}, [][5]uint64{{0, 0, 1, 0, 1}})
	badSeg[48] = 0x0a
	tests := []struct {
		name string
		p    []byte
		key  byte
		asc  uint16
	}{
		{"1 unknown volume", xcopyParams([][16]byte{{0x6a, 0xc}}, [][5]uint64{{0, 0, 1, 0, 1}}), keyCopyAborted, ascCopyTargetUnreachable},
		{"2 too many CSCD descriptors", xcopyParams(many, [][5]uint64{{0, 0, 1, 0, 1}}), KeyIllegalRequest, ascTooManyTargetDescs},
		{"3 too many segments", xcopyParams([][16]byte{naaA}, manySegs), KeyIllegalRequest, ascTooManySegmentDescs},
		{"4 unsupported CSCD type", unsupported, KeyIllegalRequest, ascUnsupportedTargetDesc},
		{"5 unsupported segment type", badSeg, KeyIllegalRequest, ascUnsupportedSegment},
		{"6 beyond the end", xcopyParams([][16]byte{naaA}, [][5]uint64{{0, 0, 8, 2045, 0}}), keyCopyAborted, ascNone},
		{"7 index beyond the CSCD list", xcopyParams([][16]byte{naaA}, [][5]uint64{{0, 1, 1, 0, 0}}), keyCopyAborted, ascCopyTargetUnreachable},
		{"8 truncated list", xcopyParams([][16]byte{naaA}, [][5]uint64{{0, 0, 1, 0, 1}})[:70], KeyIllegalRequest, ascParamListLength},
		{"9 empty list", nil, 0, 0},
	}
	for _, tc := range tests {
		r := run(tc.p)
		if k, a := senseOf(r); k != tc.key || a != tc.asc {
			t.Errorf("%s: status %#x sense %x/%04x, want %x/%04x", tc.name, r.Status, k, a, tc.key, tc.asc)
		}
	}
}
