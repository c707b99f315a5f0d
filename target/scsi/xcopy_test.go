package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"tandem.io/tandem/volume/block"
)

// locator is a CopyLocator over a fixed set of logical units, each reached
// through the copy's own nexus.
type locator map[[16]byte]*LogicalUnit

func (l locator) LocateLU(naa [16]byte, from Nexus) (*LogicalUnit, []Nexus) {
	if lu := l[naa]; lu != nil {
		return lu, []Nexus{from}
	}
	return nil, nil
}

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

// copyNode is a CopyLocator over fixed logical units, each with the I_T
// nexuses of the sessions logged in to its target.
type copyNode struct {
	lus    map[[16]byte]*LogicalUnit
	logins map[[16]byte][]Nexus
}

func (c *copyNode) LocateLU(naa [16]byte, from Nexus) (*LogicalUnit, []Nexus) {
	name, _, _ := strings.Cut(from.InitiatorPort, ",i,")
	var via []Nexus
	for _, n := range c.logins[naa] {
		if strings.HasPrefix(n.InitiatorPort, name+",i,") {
			via = append(via, n)
		}
	}
	if len(via) == 0 {
		return nil, nil
	}
	return c.lus[naa], via
}

// Issue 8, defect 2: EXTENDED COPY may only touch a unit the requesting
// initiator reaches through a session of its own, and each unit gets the
// checks a READ (source) or WRITE (destination) through that nexus would:
// ALUA access state, reservations, write protection. Initiator x sends the
// copy to unit A; unit B is served by another target, where initiator y
// may hold a reservation.
func TestExtendedCopyChecksEveryUnit(t *testing.T) {
	naaA, naaB := [16]byte{0x6a, 0xa}, [16]byte{0x6a, 0xb}
	isid := [6]byte{0x80, 0, 0, 0, 0, 1}
	xA := Nexus{InitiatorPort: IPortName("iqn.x", isid), TargetPort: "iqn.a,t,0x1", RelativePortID: 1, PortGroup: 1}
	xB := Nexus{InitiatorPort: IPortName("iqn.x", isid), TargetPort: "iqn.b,t,0x1", RelativePortID: 1, PortGroup: 1}
	yB := Nexus{InitiatorPort: IPortName("iqn.y", isid), TargetPort: "iqn.b,t,0x1", RelativePortID: 1, PortGroup: 1}
	ctx := context.Background()
	const key = 0xabc

	type setup struct {
		tA, tB     *Target
		luB        *LogicalUnit
		devA, devB *memDevice
		node       *copyNode
	}
	reserve := func(n Nexus, typ byte) func(t *testing.T, s *setup) {
		return func(t *testing.T, s *setup) {
			for _, step := range []struct{ action, typ byte }{{0, 0}, {1, typ}} {
				saKey, k := uint64(0), uint64(key)
				if step.action == 0 {
					saKey, k = key, 0
				}
				cdb, p := prout(step.action, step.typ, k, saKey, 0)
				if r := s.tB.Execute(ctx, &Command{Nexus: n, CDB: cdb, DataOut: p, ExpectedLength: 24}); r.Status != StatusGood {
					t.Fatalf("PR OUT %d by %s: status %#x", step.action, n.InitiatorPort, r.Status)
				}
			}
		}
	}
	register := func(n Nexus) func(t *testing.T, s *setup) {
		return func(t *testing.T, s *setup) {
			cdb, p := prout(0, 0, 0, 0x777, 0)
			if r := s.tB.Execute(ctx, &Command{Nexus: n, CDB: cdb, DataOut: p, ExpectedLength: 24}); r.Status != StatusGood {
				t.Fatalf("REGISTER by %s: status %#x", n.InitiatorPort, r.Status)
			}
		}
	}
	both := func(fs ...func(*testing.T, *setup)) func(*testing.T, *setup) {
		return func(t *testing.T, s *setup) {
			for _, f := range fs {
				f(t, s)
			}
		}
	}
	swp := func(t *testing.T, s *setup) { s.luB.swp.Store(true) }
	standby := func(t *testing.T, s *setup) {
		s.luB.SetPortGroups([]PortGroup{{ID: 1, State: Standby, Ports: []uint16{1}}})
		s.tB.Execute(ctx, &Command{Nexus: xB, CDB: make([]byte, 6)}) // ASYMMETRIC ACCESS STATE CHANGED
	}
	intoB := [][5]uint64{{0, 1, 8, 0, 0}}  // 8 blocks from A to B
	outOfB := [][5]uint64{{1, 0, 8, 0, 0}} // 8 blocks from B to A
	tests := []struct {
		name     string
		readOnly bool                     // B is a read-only unit
		loggedIn []Nexus                  // sessions to B's target
		prepare  func(*testing.T, *setup) // state of B
		segs     [][5]uint64              // CSCD 0 is A, 1 is B
		status   Status
		key      byte
		asc      uint16
	}{
		{"1 into B, x logged in to B", false, []Nexus{xB, yB}, nil, intoB, StatusGood, 0, 0},
		{"2 out of B, x logged in to B", false, []Nexus{xB}, nil, outOfB, StatusGood, 0, 0},
		{"3 into B, only y logged in to B", false, []Nexus{yB}, nil, intoB, StatusCheckCondition, keyCopyAborted, ascCopyTargetUnreachable},
		{"4 out of B, nobody logged in to B", false, nil, nil, outOfB, StatusCheckCondition, keyCopyAborted, ascCopyTargetUnreachable},
		{"5 into B, y holds EXCLUSIVE ACCESS", false, []Nexus{xB, yB}, reserve(yB, 3), intoB, StatusReservationConflict, 0, 0},
		{"6 out of B, y holds EXCLUSIVE ACCESS", false, []Nexus{xB, yB}, reserve(yB, 3), outOfB, StatusReservationConflict, 0, 0},
		{"7 into B, y holds WRITE EXCLUSIVE", false, []Nexus{xB, yB}, reserve(yB, 1), intoB, StatusReservationConflict, 0, 0},
		{"8 out of B, y holds WRITE EXCLUSIVE", false, []Nexus{xB, yB}, reserve(yB, 1), outOfB, StatusGood, 0, 0},
		{"9 into B, x holds EXCLUSIVE ACCESS", false, []Nexus{xB, yB}, reserve(xB, 3), intoB, StatusGood, 0, 0},
		{"10 into B, WRITE EXCLUSIVE REGISTRANTS ONLY, x registered", false, []Nexus{xB, yB}, both(register(xB), reserve(yB, 5)), intoB, StatusGood, 0, 0},
		{"11 into B, SWP set", false, []Nexus{xB}, swp, intoB, StatusCheckCondition, KeyDataProtect, ascSoftwareWriteProtected},
		{"12 out of B, SWP set", false, []Nexus{xB}, swp, outOfB, StatusGood, 0, 0},
		{"13 into B, read-only", true, []Nexus{xB}, nil, intoB, StatusCheckCondition, KeyDataProtect, ascWriteProtected},
		{"14 into B, x's port group standby", false, []Nexus{xB}, standby, intoB, StatusCheckCondition, KeyNotReady, ascStandby},
		{"15 out of B, x's port group standby", false, []Nexus{xB}, standby, outOfB, StatusCheckCondition, KeyNotReady, ascStandby},
		{"16 within A, but the list names B, which x does not reach", false, []Nexus{yB}, nil, [][5]uint64{{0, 0, 8, 0, 64}}, StatusCheckCondition, keyCopyAborted, ascCopyTargetUnreachable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &setup{devA: newMem(1 << 20), devB: newMem(1 << 20)}
			s.node = &copyNode{lus: map[[16]byte]*LogicalUnit{}, logins: map[[16]byte][]Nexus{naaB: tc.loggedIn}}
			luA, err := NewLogicalUnit(LUConfig{Device: s.devA, NAA: naaA, Copy: s.node})
			if err != nil {
				t.Fatal(err)
			}
			s.luB, err = NewLogicalUnit(LUConfig{Device: s.devB, NAA: naaB, Copy: s.node, ReadOnly: tc.readOnly})
			if err != nil {
				t.Fatal(err)
			}
			s.node.lus[naaA], s.node.lus[naaB] = luA, s.luB
			s.tA, _ = NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: luA}})
			s.tB, _ = NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: s.luB}})
			s.tA.Execute(ctx, &Command{Nexus: xA, CDB: make([]byte, 6)})
			for _, n := range tc.loggedIn {
				s.tB.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)})
			}
			for i := range s.devA.data {
				s.devA.data[i] = 0xaa
				if i >= 64*512 {
					s.devA.data[i] = 0xa5 // where a copy within A goes
				}
			}
			for i := range s.devB.data {
				s.devB.data[i] = 0xbb
			}
			if tc.prepare != nil {
				tc.prepare(t, s)
			}
			p := xcopyParams([][16]byte{naaA, naaB}, tc.segs)
			r := s.tA.Execute(ctx, &Command{Nexus: xA, CDB: xcopyCDB(len(p)), DataOut: p, ExpectedLength: uint32(len(p))})
			if k, a := senseOf(r); r.Status != tc.status || k != tc.key || a != tc.asc {
				t.Errorf("status %#x sense %x/%04x, want %#x %x/%04x", r.Status, k, a, tc.status, tc.key, tc.asc)
			}
			// The data moved only when the copy was GOOD.
			src, dst := s.devA, s.devB
			if tc.segs[0][0] == 1 {
				src, dst = s.devB, s.devA
			}
			if tc.segs[0][0] == tc.segs[0][1] {
				dst = s.devA
			}
			moved := dst.data[tc.segs[0][4]*512] == src.data[0]
			if moved != (tc.status == StatusGood) {
				t.Errorf("copy GOOD=%v but data moved=%v", tc.status == StatusGood, moved)
			}
		})
	}
}

// outOfRangeWrites fails every write as out of range.
type outOfRangeWrites struct{ *memDevice }

func (d outOfRangeWrites) WriteAt(context.Context, []byte, int64, bool) error {
	return fmt.Errorf("test: %w", block.ErrOutOfRange)
}

// A device error during a copy is COPY ABORTED for that copy only: the
// shared sense of LBA OUT OF RANGE is not rewritten for later commands.
func TestExtendedCopyDeviceErrorLeavesSenseAlone(t *testing.T) {
	naa := [16]byte{0x6a, 0xd}
	lu, _ := NewLogicalUnit(LUConfig{Device: outOfRangeWrites{newMem(1 << 20)}, NAA: naa})
	tg, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: lu}})
	ctx := context.Background()
	tg.Execute(ctx, &Command{Nexus: nexus, CDB: make([]byte, 6)})
	p := xcopyParams([][16]byte{naa}, [][5]uint64{{0, 0, 8, 0, 64}})
	r := tg.Execute(ctx, &Command{Nexus: nexus, CDB: xcopyCDB(len(p)), DataOut: p, ExpectedLength: uint32(len(p))})
	if k, a := senseOf(r); k != keyCopyAborted || a != ascLBAOutOfRange {
		t.Fatalf("copy onto a failing device: sense %x/%04x, want COPY ABORTED / LBA OUT OF RANGE", k, a)
	}
	r = tg.Execute(ctx, &Command{Nexus: nexus, CDB: cdb10(opRead10, 1<<20, 1), Buf: make([]byte, 512)})
	if k, a := senseOf(r); k != KeyIllegalRequest || a != ascLBAOutOfRange {
		t.Fatalf("READ beyond the end after the copy: sense %x/%04x, want ILLEGAL REQUEST / LBA OUT OF RANGE", k, a)
	}
}
