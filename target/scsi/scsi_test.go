package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"sync"
	"testing"

	"tandem.io/tandem/volume/block"
)

// memDevice is an in-memory thin device: unmapped blocks read as zeros.
type memDevice struct {
	mu     sync.Mutex
	data   []byte
	mapped []bool // per 4 KiB block
}

func newMem(size int) *memDevice {
	return &memDevice{data: make([]byte, size), mapped: make([]bool, size/block.PhysicalBlockSize)}
}
func (d *memDevice) Size() int64 { return int64(len(d.data)) }
func (d *memDevice) ReadAt(_ context.Context, p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.data[off:])
	return nil
}
func (d *memDevice) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data[off:], p)
	for b := off / 4096; b < (off+int64(len(p))+4095)/4096; b++ {
		d.mapped[b] = true
	}
	return nil
}
func (d *memDevice) Flush(context.Context) error { return nil }
func (d *memDevice) Unmap(_ context.Context, off, n int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.data[off : off+n])
	for b := (off + 4095) / 4096; b < (off+n)/4096; b++ {
		d.mapped[b] = false
	}
	return nil
}
func (d *memDevice) Mapping(_ context.Context, off int64) (bool, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := off / 4096
	m := d.mapped[b]
	e := b
	for e < int64(len(d.mapped)) && d.mapped[e] == m {
		e++
	}
	return m, e*4096 - off, nil
}

var nexus = Nexus{InitiatorPort: "iqn.i,i,0x1", TargetPort: "iqn.t,t,0x1", RelativePortID: 1, PortGroup: 1}

func newTarget(t testing.TB, dev block.Device) *Target {
	t.Helper()
	lu, err := NewLogicalUnit(LUConfig{Device: dev, Serial: "SERIAL01", NAA: [16]byte{0x6a, 1}})
	if err != nil {
		t.Fatal(err)
	}
	tg, err := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: lu}})
	if err != nil {
		t.Fatal(err)
	}
	// Consume the power-on unit attention.
	tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: make([]byte, 6)})
	return tg
}

func cdb10(op byte, lba uint32, n uint16) []byte {
	c := make([]byte, 10)
	c[0] = op
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], n)
	return c
}

func cdb16(op byte, lba uint64, n uint32) []byte {
	c := make([]byte, 16)
	c[0] = op
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], n)
	return c
}

func senseOf(r Result) (key byte, asc uint16) {
	if r.Status != StatusCheckCondition || len(r.Sense) < 14 {
		return 0, 0
	}
	return r.Sense[2] & 0x0f, uint16(r.Sense[12])<<8 | uint16(r.Sense[13])
}

func TestCommands(t *testing.T) {
	const size = 8 << 20 // 16384 blocks
	tests := []struct {
		name    string
		cdb     []byte
		out     []byte
		lun     uint64
		status  Status
		key     byte
		asc     uint16
		dataLen int // -1: don't check
	}{
		{"1 tur", make([]byte, 6), nil, 0, StatusGood, 0, 0, 0},
		{"2 unknown opcode", []byte{0xff, 0, 0, 0, 0, 0}, nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidOpcode, 0},
		{"3 unknown lun tur", make([]byte, 6), nil, 5, StatusCheckCondition, KeyIllegalRequest, ascLUNotSupported, 0},
		{"4 inquiry unknown lun", []byte{0x12, 0, 0, 0, 36, 0}, nil, 5, StatusGood, 0, 0, 36},
		{"5 inquiry standard", []byte{0x12, 0, 0, 0, 96, 0}, nil, 0, StatusGood, 0, 0, 96},
		{"6 inquiry page without evpd", []byte{0x12, 0, 0x80, 0, 96, 0}, nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"7 inquiry unknown vpd", []byte{0x12, 1, 0x99, 0, 96, 0}, nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"8 inquiry vpd 0x80", []byte{0x12, 1, 0x80, 0, 255, 0}, nil, 0, StatusGood, 0, 0, 12},
		{"9 inquiry truncated", []byte{0x12, 0, 0, 0, 5, 0}, nil, 0, StatusGood, 0, 0, 5},
		{"10 read capacity 10", cdb10(0x25, 0, 0), nil, 0, StatusGood, 0, 0, 8},
		{"11 read capacity 16", sa(cdb16(0x9e, 0, 32), 0x10), nil, 0, StatusGood, 0, 0, 32},
		{"12 read 10", cdb10(0x28, 0, 8), nil, 0, StatusGood, 0, 0, 4096},
		{"13 read beyond end", cdb10(0x28, 16383, 2), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascLBAOutOfRange, 0},
		{"14 read zero blocks", cdb10(0x28, 0, 0), nil, 0, StatusGood, 0, 0, 0},
		{"15 read rdprotect", append([]byte{0x28, 0x20}, make([]byte, 8)...), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"16 read 16 at huge lba", cdb16(0x88, 1<<62, 1), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascLBAOutOfRange, 0},
		{"17 write 10", cdb10(0x2a, 8, 1), bytes.Repeat([]byte{7}, 512), 0, StatusGood, 0, 0, 0},
		{"18 write beyond end", cdb10(0x2a, 16384, 1), make([]byte, 512), 0, StatusCheckCondition, KeyIllegalRequest, ascLBAOutOfRange, 0},
		{"19 write 0 blocks past end", cdb10(0x2a, 16385, 0), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascLBAOutOfRange, 0},
		{"20 sync cache", cdb10(0x35, 0, 0), nil, 0, StatusGood, 0, 0, 0},
		{"21 sync cache beyond", cdb10(0x35, 20000, 1), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascLBAOutOfRange, 0},
		{"22 report luns", []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil, 0, StatusGood, 0, 0, 16},
		{"23 report luns short alloc", []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"24 mode sense 6 all", []byte{0x1a, 0, 0x3f, 0, 255, 0}, nil, 0, StatusGood, 0, 0, 4 + 8 + 20 + 12 + 12},
		{"25 mode sense saved", []byte{0x1a, 0, 0xc8, 0, 255, 0}, nil, 0, StatusCheckCondition, KeyIllegalRequest, ascSavingNotSupported, 0},
		{"26 mode sense 10 llbaa", []byte{0x5a, 0x10, 0x08, 0, 0, 0, 0, 1, 0, 0}, nil, 0, StatusGood, 0, 0, 8 + 16 + 20},
		{"27 request sense", []byte{0x03, 0, 0, 0, 18, 0}, nil, 0, StatusGood, 0, 0, 18},
		{"28 naca", []byte{0, 0, 0, 0, 0, 4}, nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"29 unmap", []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, unmapList(16, 8), 0, StatusGood, 0, 0, 0},
		{"30 unmap beyond end", []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, unmapList(16380, 8), 0, StatusCheckCondition, KeyIllegalRequest, ascLBAOutOfRange, 0},
		{"31 unmap short list", []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, make([]byte, 4), 0, StatusCheckCondition, KeyIllegalRequest, ascParamListLength, 0},
		{"32 get lba status", sa(cdb16(0x9e, 0, 64), 0x12), nil, 0, StatusGood, 0, 0, -1},
		{"33 get lba status beyond", append(cdb16(0x9e, 99999, 64)[:1], append([]byte{0x12}, cdb16(0x9e, 99999, 64)[2:]...)...), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascLBAOutOfRange, 0},
		{"34 write same unmap", []byte{0x41, 0x08, 0, 0, 0, 0, 0, 0, 8, 0}, make([]byte, 512), 0, StatusGood, 0, 0, 0},
		{"35 write same 0 blocks", []byte{0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 512), 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"36 verify bytchk 0", cdb10(0x2f, 0, 8), nil, 0, StatusGood, 0, 0, 0},
		{"37 verify mismatch", append([]byte{0x2f, 0x02}, cdb10(0x2f, 8, 1)[2:]...), make([]byte, 512), 0, StatusCheckCondition, KeyMiscompare, ascMiscompareVerify, 0},
		{"38 rtpg", []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil, 0, StatusGood, 0, 0, 16},
		{"39 short cdb", []byte{0x28, 0, 0}, nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"40 transfer beyond the end", cdb16(0x88, 0, 65537), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascLBAOutOfRange, 0},
		{"41 write same data-out of 2 blocks", []byte{0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0}, make([]byte, 1024), 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"42 rsoc all", rsoc(0, 0, 0), nil, 0, StatusGood, 0, 0, -1},
		{"43 rsoc read 10", rsoc(1, 0x28, 0), nil, 0, StatusGood, 0, 0, 4 + 10},
		{"44 rsoc read 10 with timeouts", rsoc(0x81, 0x28, 0), nil, 0, StatusGood, 0, 0, 4 + 10 + 12},
		{"45 rsoc service action asked of read 10", rsoc(2, 0x28, 0), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"46 rsoc 0x9e without its service action", rsoc(1, 0x9e, 0), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
		{"47 rsoc read capacity 16", rsoc(2, 0x9e, 0x10), nil, 0, StatusGood, 0, 0, 4 + 16},
		{"48 rsoc unsupported opcode", rsoc(1, 0xff, 0), nil, 0, StatusGood, 0, 0, 4},
		{"49 rsoc bad reporting option", rsoc(7, 0, 0), nil, 0, StatusCheckCondition, KeyIllegalRequest, ascInvalidFieldCDB, 0},
	}
	dev := newMem(size)
	tg := newTarget(t, dev)
	for _, tc := range tests {
		expected := uint32(len(tc.out))
		if len(tc.cdb) > 0 && (tc.cdb[0] == opRead6 || tc.cdb[0] == opRead10 || tc.cdb[0] == opRead12 || tc.cdb[0] == opRead16) {
			expected = 1 << 20 // an initiator's buffer for what it reads
		}
		r := tg.Execute(context.Background(), &Command{Nexus: nexus, LUN: tc.lun, CDB: tc.cdb, DataOut: tc.out, ExpectedLength: expected})
		key, asc := senseOf(r)
		if r.Status != tc.status || key != tc.key || asc != tc.asc {
			t.Errorf("%s: status %#x sense %x/%04x, want %#x %x/%04x", tc.name, r.Status, key, asc, tc.status, tc.key, tc.asc)
		}
		if tc.dataLen >= 0 && len(r.Data) != tc.dataLen {
			t.Errorf("%s: %d bytes of data, want %d", tc.name, len(r.Data), tc.dataLen)
		}
	}
	if !bytes.Equal(dev.data[8*512:9*512], bytes.Repeat([]byte{7}, 512)) {
		t.Error("WRITE 10 did not reach the device")
	}
}

func sa(c []byte, action byte) []byte { c[1] = action; return c }

// rsoc is a REPORT SUPPORTED OPERATION CODES CDB.
func rsoc(options, op byte, action uint16) []byte {
	c := []byte{0xa3, 0x0c, options, op, 0, 0, 0, 0, 0x10, 0, 0, 0}
	binary.BigEndian.PutUint16(c[4:], action)
	return c
}

// TestOpcodeTable keeps REPORT SUPPORTED OPERATION CODES honest: every
// command it lists is dispatched, with a usage map as long as its CDB that
// starts with the opcode, and every dispatched opcode is listed.
func TestOpcodeTable(t *testing.T) {
	lu, err := NewLogicalUnit(LUConfig{Device: newMem(1 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	listed := map[byte]bool{}
	for _, o := range lu.ops {
		listed[o.op] = true
		if o.op != opReportLUNs && o.op != opRequestSense && lu.handlers[o.op].fn == nil {
			t.Errorf("opcode %#x is listed but has no handler", o.op)
		}
		if len(o.usage) != cdbLength(o.op) || o.usage[0] != o.op {
			t.Errorf("opcode %#x: usage map % x (want %d bytes starting with the opcode)", o.op, o.usage, cdbLength(o.op))
		}
		if o.hasSA && o.usage[1]&0x1f != byte(o.sa) {
			t.Errorf("opcode %#x/%#x: usage map does not carry the service action", o.op, o.sa)
		}
	}
	for op, h := range lu.handlers {
		if h.fn != nil && !listed[byte(op)] {
			t.Errorf("opcode %#x is dispatched but not listed", op)
		}
	}
}

func unmapList(lba uint64, n uint32) []byte {
	p := make([]byte, 24)
	binary.BigEndian.PutUint16(p, 22)
	binary.BigEndian.PutUint16(p[2:], 16)
	binary.BigEndian.PutUint64(p[8:], lba)
	binary.BigEndian.PutUint32(p[16:], n)
	return p
}

func TestUnitAttentions(t *testing.T) {
	tg := newTarget(t, newMem(1<<20))
	other := Nexus{InitiatorPort: "iqn.other,i,0x2"}
	ctx := context.Background()
	// A new nexus sees POWER ON first, but not on INQUIRY.
	if r := tg.Execute(ctx, &Command{Nexus: other, CDB: []byte{0x12, 0, 0, 0, 36, 0}}); r.Status != StatusGood {
		t.Fatal("INQUIRY reported a unit attention")
	}
	if _, asc := senseOf(tg.Execute(ctx, &Command{Nexus: other, CDB: make([]byte, 6)})); asc != ascPowerOnReset {
		t.Fatalf("asc %04x, want power on", asc)
	}
	if r := tg.Execute(ctx, &Command{Nexus: other, CDB: make([]byte, 6)}); r.Status != StatusGood {
		t.Fatal("unit attention not cleared")
	}
	// A LUN reset by nexus is reported to every nexus, nexus included.
	tg.LUNReset(nexus, 0)
	if _, asc := senseOf(tg.Execute(ctx, &Command{Nexus: nexus, CDB: make([]byte, 6)})); asc != ascBusDeviceReset {
		t.Fatalf("resetting nexus: asc %04x, want the reset unit attention", asc)
	}
	r := tg.Execute(ctx, &Command{Nexus: other, CDB: []byte{0x03, 0, 0, 0, 18, 0}})
	if r.Status != StatusGood || len(r.Data) < 14 || r.Data[2] != KeyUnitAttention || r.Data[12] != 0x29 || r.Data[13] != 0x03 {
		t.Fatalf("REQUEST SENSE did not return the reset unit attention: %x", r.Data)
	}
}

func TestLBAStatusAndUnmap(t *testing.T) {
	dev := newMem(1 << 20)
	tg := newTarget(t, dev)
	ctx := context.Background()
	tg.Execute(ctx, &Command{Nexus: nexus, CDB: cdb10(0x2a, 16, 16), DataOut: bytes.Repeat([]byte{1}, 8192)})
	get := func(lba uint64) (uint64, uint32, byte) {
		c := cdb16(0x9e, lba, 64)
		c[1] = 0x12
		r := tg.Execute(ctx, &Command{Nexus: nexus, CDB: c})
		if r.Status != StatusGood || len(r.Data) < 24 {
			t.Fatalf("GET LBA STATUS: %+v", r)
		}
		return binary.BigEndian.Uint64(r.Data[8:]), binary.BigEndian.Uint32(r.Data[16:]), r.Data[20]
	}
	if lba, n, st := get(0); lba != 0 || n != 16 || st != 1 {
		t.Fatalf("head: %d %d %d", lba, n, st)
	}
	if lba, n, st := get(16); lba != 16 || n != 16 || st != 0 {
		t.Fatalf("data: %d %d %d", lba, n, st)
	}
	tg.Execute(ctx, &Command{Nexus: nexus, CDB: []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, DataOut: unmapList(16, 16)})
	if _, _, st := get(16); st != 1 {
		t.Fatal("unmapped range still mapped")
	}
}

func FuzzExecute(f *testing.F) {
	f.Add(cdb10(0x28, 0, 1), []byte{})
	f.Add(cdb10(0x2a, 0, 1), make([]byte, 512))
	f.Add([]byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, unmapList(0, 8))
	f.Add([]byte{0x12, 1, 0x83, 0, 255, 0}, []byte{})
	f.Add([]byte{0x5a, 0x10, 0x3f, 0, 0, 0, 0, 1, 0, 0}, []byte{})
	f.Add(cdb16(0x9e, 0, 32), []byte{})
	f.Add([]byte{0x41, 0x08, 0, 0, 0, 0, 0, 0, 8, 0}, make([]byte, 512))
	f.Add([]byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, []byte{})
	f.Add(rsoc(0x80, 0, 0), []byte{})
	c, p := prout(0, 0, 0, 0xa, 1)
	f.Add(c, p)
	c, p = prout(1, 3, 0xa, 0, 0)
	f.Add(c, p)
	f.Add(prin(3), []byte{})
	caw := cdb16(0x89, 0, 0)
	caw[13] = 1
	f.Add(caw, make([]byte, 1024))
	xp := xcopyParams([][16]byte{{0x6a, 1}}, [][5]uint64{{0, 0, 4, 0, 8}})
	f.Add(xcopyCDB(len(xp)), xp)
	f.Add([]byte{0x15, 0x10, 0, 0, 24, 0}, append(make([]byte, 4), 0x08, 18, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
	c, p = rmove(1, 0xa, 0xb, 0x03, 1, tidISCSI(1, "iqn.b,i,0x1"))
	f.Add(c, p)
	f.Fuzz(func(t *testing.T, cdb, out []byte) {
		if len(cdb) > 260 || len(out) > 1<<16 {
			return
		}
		// A fresh target each time: reservations and mode changes made
		// by one input must not shape the next. The input runs on a
		// target without reservations and on one where the nexus is
		// registered (key 0xa) and holds a write exclusive reservation,
		// so that it also reaches the holder's paths; on LUN 0 and on a
		// LUN that does not exist.
		plain, held := newTarget(t, newMem(256<<10)), newTarget(t, newMem(256<<10))
		for _, setup := range [][2][]byte{pair(prout(0, 0, 0, 0xa, 0)), pair(prout(1, 1, 0xa, 0, 0))} {
			if r := held.Execute(context.Background(), &Command{Nexus: nexus, CDB: setup[0], DataOut: setup[1], ExpectedLength: 24}); r.Status != StatusGood {
				t.Fatalf("setting up the reservation: status %#x", r.Status)
			}
		}
		for _, run := range []struct {
			tg  *Target
			lun uint64
		}{{plain, 0}, {plain, 1}, {held, 0}} {
			r := run.tg.Execute(context.Background(), &Command{Nexus: nexus, LUN: run.lun, CDB: cdb, DataOut: out, ExpectedLength: uint32(len(out))})
			switch r.Status {
			case StatusGood, StatusReservationConflict:
			case StatusCheckCondition:
				if len(r.Sense) != 18 || r.Sense[0]&0x7f != 0x70 {
					t.Fatalf("bad sense %x", r.Sense)
				}
				// The memory device never fails: a hardware error can
				// only be a handler panic that Execute caught.
				if key, asc := senseOf(r); key == KeyHardwareError && asc == ascInternalTargetFailure {
					t.Fatalf("handler failed internally on cdb % x", cdb)
				}
			default:
				t.Fatalf("status %#x", r.Status)
			}
		}
	})
}

func BenchmarkRead4K(b *testing.B) {
	tg := newTarget(b, newMem(64<<20))
	buf := make([]byte, 4096)
	cmd := &Command{Nexus: nexus, CDB: cdb10(0x28, 0, 8), Buf: buf}
	b.ReportAllocs()
	b.SetBytes(4096)
	for i := 0; i < b.N; i++ {
		tg.Execute(context.Background(), cmd)
	}
}

func BenchmarkWrite4K(b *testing.B) {
	tg := newTarget(b, newMem(64<<20))
	cmd := &Command{Nexus: nexus, CDB: cdb10(0x2a, 0, 8), DataOut: make([]byte, 4096)}
	b.ReportAllocs()
	b.SetBytes(4096)
	for i := 0; i < b.N; i++ {
		tg.Execute(context.Background(), cmd)
	}
}

func pair(a, b []byte) [2][]byte { return [2][]byte{a, b} }

func FuzzParseTransportID(f *testing.F) {
	f.Add(tidISCSI(1, "iqn.x,i,0x00023d000001"))
	f.Add(tidISCSI(0, "iqn.x"))
	f.Add([]byte{0x45, 0, 0, 8, 'i'})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, err := parseTransportID(b)
		if err == nil && (name == "" || strings.ContainsRune(name, 0)) {
			t.Fatalf("parseTransportID(% x) = %q without an error", b, name)
		}
	})
}
