package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
)

// memStore is a ReservationStore in memory.
type memStore struct {
	mu sync.Mutex
	b  []byte
}

func (m *memStore) LoadReservations() ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.b, nil
}
func (m *memStore) SaveReservations(b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.b = append([]byte(nil), b...)
	return nil
}

func prTarget(t *testing.T, store ReservationStore) *Target {
	t.Helper()
	lu, err := NewLogicalUnit(LUConfig{Device: newMem(1 << 20), Reservations: store})
	if err != nil {
		t.Fatal(err)
	}
	tg, err := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: lu}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []Nexus{nexusA, nexusB, nexusC} {
		tg.Execute(context.Background(), &Command{Nexus: n, CDB: make([]byte, 6)}) // power-on UA
	}
	return tg
}

var (
	nexusA = Nexus{InitiatorPort: "iqn.a,i,0x000000000001", TargetPort: "iqn.t,t,0x1", RelativePortID: 1, PortGroup: 1}
	nexusB = Nexus{InitiatorPort: "iqn.b,i,0x000000000001", TargetPort: "iqn.t,t,0x1", RelativePortID: 1, PortGroup: 1}
	nexusC = Nexus{InitiatorPort: "iqn.c,i,0x000000000001", TargetPort: "iqn.t,t,0x1", RelativePortID: 1, PortGroup: 1}
)

func prout(action, typ byte, key, saKey uint64, flags byte) ([]byte, []byte) {
	cdb := []byte{0x5f, action, typ, 0, 0, 0, 0, 0, 24, 0}
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	p[20] = flags
	return cdb, p
}

func prin(action byte) []byte { return []byte{0x5e, action, 0, 0, 0, 0, 0, 0x10, 0, 0} }

// TestPersistentReservations walks through the rules step by step; each
// step is one command from one nexus and its expected status (and sense).
func TestPersistentReservations(t *testing.T) {
	store := &memStore{}
	tg := prTarget(t, store)
	read := cdb10(0x28, 0, 1)
	write := func() ([]byte, []byte) { return cdb10(0x2a, 0, 1), make([]byte, 512) }
	type step struct {
		name   string
		n      Nexus
		cdb    []byte
		out    []byte
		status Status
		asc    uint16 // expected sense for CHECK CONDITION
	}
	reg := func(key, sa uint64) ([]byte, []byte) { return prout(0, 0, key, sa, 0) }
	c := func(cdb, out []byte) [2][]byte { return [2][]byte{cdb, out} }
	w := c(write())
	steps := []step{
		{"1 A registers", nexusA, c(reg(0, 0xa))[0], c(reg(0, 0xa))[1], StatusGood, 0},
		{"2 A registers again with a wrong key", nexusA, c(reg(0xbad, 0xa))[0], c(reg(0xbad, 0xa))[1], StatusReservationConflict, 0},
		{"3 B registers", nexusB, c(reg(0, 0xb))[0], c(reg(0, 0xb))[1], StatusGood, 0},
		{"4 C reserves unregistered", nexusC, c(prout(1, 1, 0xc, 0, 0))[0], c(prout(1, 1, 0xc, 0, 0))[1], StatusReservationConflict, 0},
		{"5 A reserves write exclusive", nexusA, c(prout(1, 1, 0xa, 0, 0))[0], c(prout(1, 1, 0xa, 0, 0))[1], StatusGood, 0},
		{"6 B reserves too", nexusB, c(prout(1, 1, 0xb, 0, 0))[0], c(prout(1, 1, 0xb, 0, 0))[1], StatusReservationConflict, 0},
		{"7 B reads", nexusB, read, nil, StatusGood, 0},
		{"8 B writes", nexusB, w[0], w[1], StatusReservationConflict, 0},
		{"9 A writes", nexusA, w[0], w[1], StatusGood, 0},
		{"10 C reads capacity", nexusC, cdb10(0x25, 0, 0), nil, StatusGood, 0},
		{"11 A releases with the wrong type", nexusA, c(prout(2, 3, 0xa, 0, 0))[0], c(prout(2, 3, 0xa, 0, 0))[1], StatusCheckCondition, ascInvalidReleaseOfPR},
		{"12 B preempts A", nexusB, c(prout(4, 3, 0xb, 0xa, 0))[0], c(prout(4, 3, 0xb, 0xa, 0))[1], StatusGood, 0},
		{"13 A sees registrations preempted", nexusA, read, nil, StatusCheckCondition, ascRegistrationsPreempted},
		{"14 A, unregistered, reads under exclusive access", nexusA, read, nil, StatusReservationConflict, 0},
		{"15 B writes", nexusB, w[0], w[1], StatusGood, 0},
		{"16 A registers again", nexusA, c(reg(0, 0xa))[0], c(reg(0, 0xa))[1], StatusGood, 0},
		{"17 B releases", nexusB, c(prout(2, 3, 0xb, 0, 0))[0], c(prout(2, 3, 0xb, 0, 0))[1], StatusGood, 0},
		{"18 A reserves all-registrants", nexusA, c(prout(1, 8, 0xa, 0, 0))[0], c(prout(1, 8, 0xa, 0, 0))[1], StatusGood, 0},
		{"19 B, a registrant, writes", nexusB, w[0], w[1], StatusGood, 0},
		{"20 C, not registered, reads", nexusC, read, nil, StatusReservationConflict, 0},
		{"21 C reserves with SPC-2 RESERVE", nexusC, []byte{0x16, 0, 0, 0, 0, 0}, nil, StatusReservationConflict, 0},
		{"22 B clears", nexusB, c(prout(3, 0, 0xb, 0, 0))[0], c(prout(3, 0, 0xb, 0, 0))[1], StatusGood, 0},
		{"23 A sees reservations preempted", nexusA, read, nil, StatusCheckCondition, ascReservationsPreempted},
		{"24 C reads", nexusC, read, nil, StatusGood, 0},
		{"25 spec_i_pt refused", nexusC, c(prout(0, 0, 0, 0xc, 0x08))[0], c(prout(0, 0, 0, 0xc, 0x08))[1], StatusCheckCondition, ascInvalidFieldParam},
		{"26 bad type", nexusC, c(prout(1, 2, 0, 0, 0))[0], c(prout(1, 2, 0, 0, 0))[1], StatusCheckCondition, ascInvalidFieldCDB},
		{"27 short parameter list", nexusC, []byte{0x5f, 0, 0, 0, 0, 0, 0, 0, 8, 0}, make([]byte, 8), StatusCheckCondition, ascParamListLength},
		{"28 C registers ignoring the key", nexusC, c(prout(6, 0, 0x999, 0xc, 0x01))[0], c(prout(6, 0, 0x999, 0xc, 0x01))[1], StatusGood, 0},
		{"29 C reserves SPC-2 style while registered", nexusC, []byte{0x16, 0, 0, 0, 0, 0}, nil, StatusReservationConflict, 0},
		{"29a C unregisters", nexusC, c(reg(0xc, 0))[0], c(reg(0xc, 0))[1], StatusGood, 0},
		{"29b C reserves SPC-2 style", nexusC, []byte{0x16, 0, 0, 0, 0, 0}, nil, StatusGood, 0},
		{"30 A reads under C's SPC-2 reservation", nexusA, read, nil, StatusReservationConflict, 0},
		{"31 C releases SPC-2", nexusC, []byte{0x17, 0, 0, 0, 0, 0}, nil, StatusGood, 0},
		{"32 A reads", nexusA, read, nil, StatusGood, 0},
	}
	for _, s := range steps {
		r := tg.Execute(context.Background(), &Command{Nexus: s.n, CDB: s.cdb, DataOut: s.out, ExpectedLength: uint32(len(s.out))})
		_, asc := senseOf(r)
		if r.Status != s.status || r.Status == StatusCheckCondition && asc != s.asc {
			t.Fatalf("%s: status %#x asc %04x, want %#x %04x", s.name, r.Status, asc, s.status, s.asc)
		}
	}
	// READ KEYS: C's key 0xc only (A and B were cleared).
	c28 := c(prout(6, 0, 0, 0xc, 0x01))
	if r := tg.Execute(context.Background(), &Command{Nexus: nexusC, CDB: c28[0], DataOut: c28[1], ExpectedLength: 24}); r.Status != StatusGood {
		t.Fatalf("C registers again: %#x", r.Status)
	}
	r := tg.Execute(context.Background(), &Command{Nexus: nexusA, CDB: prin(0)})
	if r.Status != StatusGood || binary.BigEndian.Uint32(r.Data[4:]) != 8 || binary.BigEndian.Uint64(r.Data[8:]) != 0xc {
		t.Fatalf("READ KEYS: % x", r.Data)
	}
	gen := binary.BigEndian.Uint32(r.Data)

	// The state survives a new logical unit on the same store (a restart).
	tg2 := prTarget(t, store)
	r = tg2.Execute(context.Background(), &Command{Nexus: nexusA, CDB: prin(0)})
	if binary.BigEndian.Uint32(r.Data) != gen || binary.BigEndian.Uint64(r.Data[8:]) != 0xc {
		t.Fatalf("after reload, READ KEYS: % x (generation was %d)", r.Data, gen)
	}
	r = tg2.Execute(context.Background(), &Command{Nexus: nexusA, CDB: prin(2)})
	if r.Status != StatusGood || r.Data[3]&0x01 == 0 {
		t.Fatalf("REPORT CAPABILITIES after an APTPL registration: % x", r.Data)
	}
	r = tg2.Execute(context.Background(), &Command{Nexus: nexusA, CDB: prin(3)})
	if r.Status != StatusGood || binary.BigEndian.Uint32(r.Data[4:]) < 24 {
		t.Fatalf("READ FULL STATUS: % x", r.Data)
	}
}

// TestCompareAndWriteOneWinnerPerRound runs the VMFS heartbeat pattern:
// several initiators read the block, then all try to swap it for their own
// value; in every round exactly one succeeds and the block holds its value.
func TestCompareAndWriteOneWinnerPerRound(t *testing.T) {
	dev := newMem(1 << 20)
	tg := newTarget(t, dev)
	const players, rounds = 6, 200
	cur := make([]byte, 512)
	for round := 1; round <= rounds; round++ {
		var wg sync.WaitGroup
		wins := make([]bool, players)
		for p := 0; p < players; p++ {
			wg.Add(1)
			go func(p int) {
				defer wg.Done()
				out := make([]byte, 1024)
				copy(out, cur)
				binary.BigEndian.PutUint32(out[512:], uint32(round))
				out[516] = byte(p)
				cdb := cdb16(0x89, 3, 0)
				cdb[13] = 1
				r := tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: cdb, DataOut: out, ExpectedLength: 1024})
				switch key, asc := senseOf(r); {
				case r.Status == StatusGood:
					wins[p] = true
				case key != KeyMiscompare || asc != ascMiscompareVerify:
					t.Errorf("round %d player %d: status %#x sense %x/%04x", round, p, r.Status, key, asc)
				}
			}(p)
		}
		wg.Wait()
		winner := -1
		for p, w := range wins {
			if w {
				if winner >= 0 {
					t.Fatalf("round %d: players %d and %d both won", round, winner, p)
				}
				winner = p
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: nobody won", round)
		}
		copy(cur, dev.data[3*512:4*512])
		if binary.BigEndian.Uint32(cur) != uint32(round) || cur[4] != byte(winner) {
			t.Fatalf("round %d: block holds % x, want the winner's (%d) value", round, cur[:8], winner)
		}
	}
}

func TestCompareAndWriteErrors(t *testing.T) {
	tg := newTarget(t, newMem(1<<20))
	caw := func(lba uint64, n byte) []byte { c := cdb16(0x89, lba, 0); c[13] = n; return c }
	tests := []struct {
		name string
		cdb  []byte
		out  []byte
		key  byte
		asc  uint16
	}{
		{"1 match on zeros", caw(0, 1), make([]byte, 1024), 0, 0},
		{"2 miscompare", caw(0, 1), append(make([]byte, 511), make([]byte, 513)...), 0, 0},
		{"3 data-out of one block", caw(0, 1), make([]byte, 512), KeyIllegalRequest, ascInvalidFieldCDB},
		{"4 beyond the end", caw(2048, 1), make([]byte, 1024), KeyIllegalRequest, ascLBAOutOfRange},
		{"5 zero blocks", caw(0, 0), nil, 0, 0},
		{"6 wrprotect", func() []byte { c := caw(0, 1); c[1] = 0x20; return c }(), make([]byte, 1024), KeyIllegalRequest, ascInvalidFieldCDB},
	}
	miss := make([]byte, 1024)
	miss[100] = 1
	tests = append(tests, struct {
		name string
		cdb  []byte
		out  []byte
		key  byte
		asc  uint16
	}{"7 miscompare at byte 100", caw(0, 1), miss, KeyMiscompare, ascMiscompareVerify})
	for _, tc := range tests {
		r := tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: tc.cdb, DataOut: tc.out, ExpectedLength: uint32(len(tc.out))})
		key, asc := senseOf(r)
		if key != tc.key || asc != tc.asc {
			t.Errorf("%s: status %#x sense %x/%04x, want %x/%04x", tc.name, r.Status, key, asc, tc.key, tc.asc)
		}
		if tc.key == KeyMiscompare && (r.Sense[0]&0x80 == 0 || binary.BigEndian.Uint32(r.Sense[3:]) != 100) {
			t.Errorf("%s: INFORMATION should be the offset 100: % x", tc.name, r.Sense)
		}
	}
}

func TestModeSelectWriteCache(t *testing.T) {
	tg := prTarget(t, nil)
	caching := func(wce bool, extra byte) []byte {
		p := make([]byte, 4+20)
		p[4], p[5] = 0x08, 18
		if wce {
			p[6] = 0x04
		}
		p[7] = extra
		return p
	}
	sel := func(n Nexus, cdb1 byte, p []byte) Result {
		return tg.Execute(context.Background(), &Command{Nexus: n, CDB: []byte{0x15, cdb1, 0, 0, byte(len(p)), 0}, DataOut: p, ExpectedLength: uint32(len(p))})
	}
	wce := func(n Nexus) bool {
		r := tg.Execute(context.Background(), &Command{Nexus: n, CDB: []byte{0x1a, 0x08, 0x08, 0, 255, 0}})
		return r.Data[4+2]&0x04 != 0
	}
	if !wce(nexusA) {
		t.Fatal("WCE should start set")
	}
	tests := []struct {
		name   string
		cdb1   byte
		p      []byte
		status Status
		asc    uint16
	}{
		{"1 save bit", 0x11, caching(false, 0), StatusCheckCondition, ascInvalidFieldCDB},
		{"2 not page format", 0x00, caching(false, 0), StatusCheckCondition, ascInvalidFieldCDB},
		{"3 unchangeable bit", 0x10, caching(true, 0x80), StatusCheckCondition, ascInvalidFieldParam},
		{"4 unknown page", 0x10, append(make([]byte, 4), 0x33, 2, 0, 0), StatusCheckCondition, ascInvalidFieldParam},
		{"5 clear WCE", 0x10, caching(false, 0), StatusGood, 0},
	}
	for _, tc := range tests {
		r := sel(nexusA, tc.cdb1, tc.p)
		if _, asc := senseOf(r); r.Status != tc.status || asc != tc.asc {
			t.Errorf("%s: status %#x asc %04x, want %#x %04x", tc.name, r.Status, asc, tc.status, tc.asc)
		}
	}
	if wce(nexusA) {
		t.Error("WCE still set after MODE SELECT cleared it")
	}
	r := tg.Execute(context.Background(), &Command{Nexus: nexusB, CDB: make([]byte, 6)})
	if _, asc := senseOf(r); asc != ascModeParamsChanged {
		t.Errorf("other nexus: want MODE PARAMETERS CHANGED, got status %#x asc %04x", r.Status, asc)
	}
}

func TestPortGroups(t *testing.T) {
	lu, err := NewLogicalUnit(LUConfig{Device: newMem(1 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	tg, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: lu}})
	ctx := context.Background()
	tg.Execute(ctx, &Command{Nexus: nexusA, CDB: make([]byte, 6)})
	rtpg := []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}
	r := tg.Execute(ctx, &Command{Nexus: nexusA, CDB: rtpg})
	if r.Status != StatusGood || len(r.Data) != 16 || r.Data[4] != 0x80 {
		t.Fatalf("default: one active/optimized group, got % x", r.Data)
	}
	// Two nodes serve the volume; this port's group (1) goes standby.
	lu.SetPortGroups([]PortGroup{{ID: 1, State: Standby, Ports: []uint16{1}}, {ID: 2, State: ActiveOptimized, Ports: []uint16{2}}})
	read := cdb10(0x28, 0, 1)
	steps := []struct {
		name   string
		cdb    []byte
		status Status
		asc    uint16
	}{
		{"1 state change reported", read, StatusCheckCondition, ascAccessStateChanged},
		{"2 read through a standby group", read, StatusCheckCondition, ascStandby},
		{"3 inquiry still works", []byte{0x12, 0, 0, 0, 36, 0}, StatusGood, 0},
		{"4 rtpg lists both groups", rtpg, StatusGood, 0},
	}
	for _, s := range steps {
		r = tg.Execute(ctx, &Command{Nexus: nexusA, CDB: s.cdb})
		if _, asc := senseOf(r); r.Status != s.status || asc != s.asc {
			t.Fatalf("%s: status %#x asc %04x, want %#x %04x", s.name, r.Status, asc, s.status, s.asc)
		}
	}
	if len(r.Data) != 4+12+12 || r.Data[4]&0x0f != byte(Standby) || r.Data[16]&0x0f != byte(ActiveOptimized) {
		t.Fatalf("rtpg: % x", r.Data)
	}
}

// tidISCSI is an iSCSI TransportID of format 0 (name) or 1 (name,i,0xISID).
func tidISCSI(format byte, name string) []byte {
	n := len(name) + 1
	n += (4 - n%4) % 4
	b := make([]byte, 4+n)
	b[0] = format<<6 | 0x05
	binary.BigEndian.PutUint16(b[2:], uint16(n))
	copy(b[4:], name)
	return b
}

// rmove builds PERSISTENT RESERVE OUT / REGISTER AND MOVE.
func rmove(typ byte, key, saKey uint64, flags byte, relPort uint16, tid []byte) ([]byte, []byte) {
	p := make([]byte, 24, 24+len(tid))
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	p[17] = flags
	binary.BigEndian.PutUint16(p[18:], relPort)
	binary.BigEndian.PutUint32(p[20:], uint32(len(tid)))
	p = append(p, tid...)
	cdb := []byte{0x5f, 7, typ, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[5:], uint32(len(p)))
	return cdb, p
}

func TestRegisterAndMove(t *testing.T) {
	store := &memStore{}
	tg := prTarget(t, store)
	read := cdb10(0x28, 0, 1)
	write, data := cdb10(0x2a, 0, 1), make([]byte, 512)
	toC := tidISCSI(1, "iqn.c,i,0x000000000001")
	type step struct {
		name     string
		n        Nexus
		cdb, out []byte
		status   Status
		asc      uint16
	}
	st := func(name string, n Nexus, cdbOut func() ([]byte, []byte), status Status, asc uint16) step {
		cdb, out := cdbOut()
		return step{name, n, cdb, out, status, asc}
	}
	pr := func(action, typ byte, key, saKey uint64) func() ([]byte, []byte) {
		return func() ([]byte, []byte) { return prout(action, typ, key, saKey, 0) }
	}
	mv := func(typ byte, key, saKey uint64, flags byte, relPort uint16, tid []byte) func() ([]byte, []byte) {
		return func() ([]byte, []byte) { return rmove(typ, key, saKey, flags, relPort, tid) }
	}
	io := func(cdb []byte, out []byte) func() ([]byte, []byte) {
		return func() ([]byte, []byte) { return cdb, out }
	}
	short := func() ([]byte, []byte) {
		cdb, p := rmove(1, 0xa, 0xc, 0, 1, toC)
		binary.BigEndian.PutUint32(p[20:], uint32(len(toC)+4)) // longer than the list
		return cdb, p
	}
	notISCSI := append([]byte(nil), toC...)
	notISCSI[0] = 0x41 // format 01, protocol 1 (SPI)
	steps := []step{
		st("1 A registers", nexusA, pr(0, 0, 0, 0xa), StatusGood, 0),
		st("2 B registers", nexusB, pr(0, 0, 0, 0xb), StatusGood, 0),
		st("3 A moves without a reservation", nexusA, mv(1, 0xa, 0xc, 0, 1, toC), StatusReservationConflict, 0),
		st("4 A reserves write exclusive", nexusA, pr(1, 1, 0xa, 0), StatusGood, 0),
		st("5 B, not the holder, moves", nexusB, mv(1, 0xb, 0xc, 0, 1, toC), StatusReservationConflict, 0),
		st("6 C, not registered, moves", nexusC, mv(1, 0, 0xc, 0, 1, toC), StatusReservationConflict, 0),
		st("7 A with a wrong key", nexusA, mv(1, 0xbad, 0xc, 0, 1, toC), StatusReservationConflict, 0),
		st("8 service action key 0", nexusA, mv(1, 0xa, 0, 0, 1, toC), StatusCheckCondition, ascInvalidFieldParam),
		st("9 TransportID beyond the list", nexusA, short, StatusCheckCondition, ascParamListLength),
		st("10 TransportID not iSCSI", nexusA, mv(1, 0xa, 0xc, 0, 1, notISCSI), StatusCheckCondition, ascInvalidFieldParam),
		st("11 unknown relative port", nexusA, mv(1, 0xa, 0xc, 0, 2, toC), StatusCheckCondition, ascInvalidFieldParam),
		st("12 to itself", nexusA, mv(1, 0xa, 0xc, 0, 1, tidISCSI(1, "iqn.a,i,0x1")), StatusCheckCondition, ascInvalidFieldParam),
		st("13 format 00 of an initiator with no nexus", nexusA, mv(1, 0xa, 0xc, 0, 1, tidISCSI(0, "iqn.nobody")), StatusCheckCondition, ascInvalidFieldParam),
		st("14 bad type", nexusA, mv(2, 0xa, 0xc, 0, 1, toC), StatusCheckCondition, ascInvalidFieldCDB),
		st("15 A moves to C (format 01), keeps its registration", nexusA, mv(1, 0xa, 0xc, 0, 1, toC), StatusGood, 0),
		st("16 C, the holder now, writes", nexusC, io(write, data), StatusGood, 0),
		st("17 A, registered but not the holder, writes", nexusA, io(write, data), StatusReservationConflict, 0),
		st("18 A's key still works (it registers a new one)", nexusA, pr(0, 0, 0xa, 0xaa), StatusGood, 0),
		st("19 C moves to B (format 00) and unregisters", nexusC, mv(1, 0xc, 0xbb, 0x02, 1, tidISCSI(0, "iqn.b")), StatusGood, 0),
		st("20 B writes", nexusB, io(write, data), StatusGood, 0),
		st("21 C, unregistered, writes", nexusC, io(write, data), StatusReservationConflict, 0),
		st("22 C reads under write exclusive", nexusC, io(read, nil), StatusGood, 0),
		st("23 B's old key is gone", nexusB, pr(0, 0, 0xb, 0xb), StatusReservationConflict, 0),
		st("24 B releases", nexusB, pr(2, 1, 0xbb, 0), StatusGood, 0),
		st("25 B reserves all-registrants", nexusB, pr(1, 7, 0xbb, 0), StatusGood, 0),
		st("26 an all-registrants reservation does not move", nexusB, mv(7, 0xbb, 0xa, 0, 1, tidISCSI(1, "iqn.a,i,0x1")), StatusReservationConflict, 0),
	}
	for _, s := range steps {
		r := tg.Execute(context.Background(), &Command{Nexus: s.n, CDB: s.cdb, DataOut: s.out, ExpectedLength: uint32(len(s.out))})
		_, asc := senseOf(r)
		if r.Status != s.status || r.Status == StatusCheckCondition && asc != s.asc {
			t.Fatalf("%s: status %#x asc %04x, want %#x %04x", s.name, r.Status, asc, s.status, s.asc)
		}
	}
	// Keys: A's 0xaa and B's 0xbb (C unregistered by step 19), and the
	// state came through a reload.
	tg2 := prTarget(t, store)
	r := tg2.Execute(context.Background(), &Command{Nexus: nexusA, CDB: prin(0)})
	var keys []uint64
	for i := 8; i+8 <= len(r.Data); i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(r.Data[i:]))
	}
	if len(keys) != 2 || keys[0] != 0xaa || keys[1] != 0xbb {
		t.Fatalf("READ KEYS after the moves: %x", keys)
	}
	r = tg2.Execute(context.Background(), &Command{Nexus: nexusA, CDB: prin(1)})
	if r.Status != StatusGood || len(r.Data) < 24 || r.Data[21] != 7 {
		t.Fatalf("READ RESERVATION: % x", r.Data)
	}
}

func TestParseTransportID(t *testing.T) {
	for _, c := range []struct {
		tid  []byte
		want string
	}{
		{tidISCSI(1, "iqn.x,i,0x00023d000001"), "iqn.x,i,0x00023d000001"},
		{tidISCSI(1, "iqn.x,I,0X00023D000001"), "iqn.x,i,0x00023d000001"},
		{tidISCSI(1, "iqn.x,i,0x1"), "iqn.x,i,0x000000000001"},
		{tidISCSI(0, "iqn.x"), "iqn.x"},
		{tidISCSI(1, "iqn.x"), ""},
		{tidISCSI(0, "iqn.x,i,0x1"), ""},
		{tidISCSI(1, "iqn.x,i,0xnothex"), ""},
		{tidISCSI(1, "iqn.x,i,0x1234567890abcd"), ""}, // more than 48 bits
		{tidISCSI(2, "iqn.x"), ""},
		{[]byte{0x45, 0, 0, 8, 'i', 'q', 'n'}, ""},        // length beyond the data
		{[]byte{0x45, 0, 0, 4, 'i', 'q', 'n', '.'}, ""},   // no NUL
		{[]byte{0x45, 0, 0}, ""},                          // short header
		{append([]byte{0x05, 0, 0, 4}, "\x00abc"...), ""}, // empty name
	} {
		got, err := parseTransportID(c.tid)
		if c.want == "" && err == nil || c.want != "" && (err != nil || got != c.want) {
			t.Errorf("parseTransportID(% x) = %q, %v; want %q", c.tid, got, err, c.want)
		}
	}
}

// PREEMPT AND ABORT names the preempted nexuses for the transport to abort
// their tasks; PREEMPT does not.
func TestPreemptAndAbortNamesTheVictims(t *testing.T) {
	for _, c := range []struct {
		action byte
		want   []Nexus
	}{
		{4, nil},
		{5, []Nexus{{InitiatorPort: nexusB.InitiatorPort, TargetPort: nexusB.TargetPort}}},
	} {
		tg := prTarget(t, &memStore{})
		for _, s := range []struct {
			n      Nexus
			action byte
			typ    byte
			key    uint64
			saKey  uint64
		}{{nexusA, 0, 0, 0, 0xa}, {nexusB, 0, 0, 0, 0xb}, {nexusC, 0, 0, 0, 0xc}, {nexusB, 1, 1, 0xb, 0}} {
			cdb, p := prout(s.action, s.typ, s.key, s.saKey, 0)
			if r := tg.Execute(context.Background(), &Command{Nexus: s.n, CDB: cdb, DataOut: p, ExpectedLength: 24}); r.Status != StatusGood {
				t.Fatalf("setup: status %#x", r.Status)
			}
		}
		cdb, p := prout(c.action, 1, 0xa, 0xb, 0)
		r := tg.Execute(context.Background(), &Command{Nexus: nexusA, CDB: cdb, DataOut: p, ExpectedLength: 24})
		if r.Status != StatusGood || !slices.Equal(r.AbortNexuses, c.want) {
			t.Errorf("service action %d: status %#x, abort %v; want %v", c.action, r.Status, r.AbortNexuses, c.want)
		}
	}
}

// The control page's changeable bits: D_SENSE switches the logical unit's
// sense data to descriptor format, SWP write-protects it; anything else is
// refused; other nexuses see MODE PARAMETERS CHANGED.
func TestModeSelectControlPage(t *testing.T) {
	tg := prTarget(t, nil)
	ctx := context.Background()
	do := func(n Nexus, cdb, out []byte) Result {
		return tg.Execute(ctx, &Command{Nexus: n, CDB: cdb, DataOut: out, ExpectedLength: uint32(len(out))})
	}
	page := func(pc byte) []byte {
		r := do(nexusA, []byte{0x1a, 0x08, pc<<6 | 0x0a, 0, 255, 0}, nil)
		if r.Status != StatusGood || len(r.Data) != 4+12 {
			t.Fatalf("MODE SENSE control page: status %#x, % x", r.Status, r.Data)
		}
		return r.Data[4:]
	}
	if ch := page(1); ch[2] != 0x04 || ch[4] != 0x08 {
		t.Fatalf("changeable control page % x: want D_SENSE and SWP", ch)
	}
	sel := func(dsense, swp bool, extra func(p []byte)) Result {
		p := append(make([]byte, 4), page(0)...)
		p[6] &^= 0x04
		p[8] &^= 0x08
		if dsense {
			p[6] |= 0x04
		}
		if swp {
			p[8] |= 0x08
		}
		if extra != nil {
			extra(p)
		}
		return do(nexusA, []byte{0x15, 0x10, 0, 0, byte(len(p)), 0}, p)
	}
	write := func() Result { return do(nexusA, cdb10(0x2a, 0, 1), make([]byte, 512)) }

	if r := sel(true, false, nil); r.Status != StatusGood {
		t.Fatalf("D_SENSE=1: status %#x", r.Status)
	}
	if r := do(nexusA, []byte{0xff, 0, 0, 0, 0, 0}, nil); r.Status != StatusCheckCondition ||
		!bytes.Equal(r.Sense, []byte{0x72, KeyIllegalRequest, 0x20, 0, 0, 0, 0, 0}) {
		t.Errorf("invalid opcode with D_SENSE: sense % x", r.Sense)
	}
	// A field pointer becomes a sense key specific descriptor.
	if r := do(nexusA, []byte{0x1a, 0, 0x33, 0, 255, 0}, nil); r.Status != StatusCheckCondition ||
		!bytes.Equal(r.Sense, []byte{0x72, KeyIllegalRequest, 0x24, 0, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0xcd, 0, 2, 0}) {
		t.Errorf("invalid field with D_SENSE: sense % x", r.Sense)
	}
	if r := do(nexusA, []byte{0x03, 0x01, 0, 0, 252, 0}, nil); r.Status != StatusGood || len(r.Data) != 8 || r.Data[0] != 0x72 {
		t.Errorf("REQUEST SENSE DESC=1: % x", r.Data)
	}
	if r := do(nexusA, []byte{0x03, 0, 0, 0, 252, 0}, nil); r.Status != StatusGood || len(r.Data) != 18 || r.Data[0] != 0x70 {
		t.Errorf("REQUEST SENSE DESC=0: % x", r.Data)
	}

	if r := sel(true, true, nil); r.Status != StatusGood {
		t.Fatalf("SWP=1: status %#x", r.Status)
	}
	if r := write(); r.Status != StatusCheckCondition || !bytes.Equal(r.Sense[:4], []byte{0x72, KeyDataProtect, 0x27, 0x02}) {
		t.Errorf("WRITE under SWP: status %#x sense % x", r.Status, r.Sense)
	}
	if r := do(nexusA, []byte{0x1a, 0x08, 0x0a, 0, 255, 0}, nil); r.Data[2]&0x80 == 0 {
		t.Errorf("MODE SENSE under SWP: WP not set: % x", r.Data[:4])
	}
	if r := do(nexusA, cdb10(0x28, 0, 1), nil); r.Status != StatusGood {
		t.Errorf("READ under SWP: status %#x", r.Status)
	}
	if r := sel(true, true, func(p []byte) { p[6] |= 0x20 }); r.Status != StatusCheckCondition || r.Sense[2] != 0x26 {
		t.Errorf("changing TST: status %#x sense % x, want INVALID FIELD IN PARAMETER LIST", r.Status, r.Sense)
	}

	if r := sel(false, false, nil); r.Status != StatusGood {
		t.Fatalf("D_SENSE=0 SWP=0: status %#x", r.Status)
	}
	if r := write(); r.Status != StatusGood {
		t.Errorf("WRITE after SWP=0: status %#x", r.Status)
	}
	if r := do(nexusA, []byte{0xff, 0, 0, 0, 0, 0}, nil); len(r.Sense) != 18 || r.Sense[0] != 0x70 {
		t.Errorf("invalid opcode after D_SENSE=0: sense % x", r.Sense)
	}
	if r := do(nexusB, make([]byte, 6), nil); r.Status != StatusCheckCondition || r.Sense[12] != 0x2a || r.Sense[13] != 0x01 {
		t.Errorf("other nexus: sense % x, want MODE PARAMETERS CHANGED", r.Sense)
	}
}

// TestAccessStates: what each asymmetric access state lets through
// (SPC-4 §5.15.2.4), and that setting the same groups again raises no
// unit attention.
func TestAccessStates(t *testing.T) {
	read := cdb10(0x28, 0, 1)
	write := cdb10(0x2a, 0, 1)
	tur := make([]byte, 6)
	inquiry := []byte{0x12, 0, 0, 0, 36, 0}
	rtpg := []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}
	cap10 := make([]byte, 10)
	cap10[0] = 0x25
	cap16 := []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}
	modeSense := []byte{0x1a, 0, 0x3f, 0, 255, 0}
	prIn := []byte{0x5e, 0, 0, 0, 0, 0, 0, 0, 255, 0}
	prOut := []byte{0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0}
	type want struct {
		cdb []byte
		asc uint16 // 0: runs (not refused for its path)
	}
	tests := []struct {
		state AccessState
		wants []want
	}{
		{ActiveOptimized, []want{{read, 0}, {write, 0}, {tur, 0}, {cap16, 0}}},
		{ActiveNonOptimized, []want{{read, 0}, {write, 0}, {tur, 0}}},
		{Standby, []want{{read, ascStandby}, {write, ascStandby}, {tur, ascStandby}, {inquiry, 0}, {rtpg, 0},
			{cap10, 0}, {cap16, 0}, {modeSense, 0}, {prIn, 0}, {prOut, ascStandby}}},
		{Unavailable, []want{{read, ascUnavailable}, {tur, ascUnavailable}, {inquiry, 0}, {rtpg, 0},
			{cap10, ascUnavailable}, {cap16, ascUnavailable}, {modeSense, ascUnavailable}, {prIn, ascUnavailable}}},
		{Transitioning, []want{{read, ascTransitioning}, {write, ascTransitioning}, {tur, ascTransitioning}, {inquiry, 0},
			{rtpg, 0}, {cap16, ascTransitioning}}},
	}
	for _, tc := range tests {
		lu, err := NewLogicalUnit(LUConfig{Device: newMem(1 << 20)})
		if err != nil {
			t.Fatal(err)
		}
		tg, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: lu}})
		ctx := context.Background()
		groups := []PortGroup{{ID: 1, State: tc.state, Ports: []uint16{1}}, {ID: 2, State: Standby, Ports: []uint16{2}}}
		tg.Execute(ctx, &Command{Nexus: nexusA, CDB: inquiry}) // the nexus exists
		if !lu.SetPortGroups(groups) {
			t.Fatalf("state %#x: first groups reported as no change", tc.state)
		}
		for range 2 { // power on, then the state change
			if r := tg.Execute(ctx, &Command{Nexus: nexusA, CDB: read}); r.Status != StatusCheckCondition {
				t.Fatalf("state %#x: no unit attention pending", tc.state)
			}
		}
		if lu.SetPortGroups(slices.Clone(groups)) {
			t.Fatalf("state %#x: the same groups again reported as a change", tc.state)
		}
		for _, w := range tc.wants {
			r := tg.Execute(ctx, &Command{Nexus: nexusA, CDB: w.cdb})
			key, asc := senseOf(r)
			refused := r.Status == StatusCheckCondition && key == KeyNotReady
			if w.asc == 0 && refused || w.asc != 0 && (!refused || asc != w.asc) {
				t.Errorf("state %#x, opcode %#x: status %#x key %#x asc %04x, want asc %04x", tc.state, w.cdb[0], r.Status, key, asc, w.asc)
			}
		}
	}
}

// TestReservationsAcrossPorts: a unit served through two target ports
// (two cluster nodes): ALL_TG_PT registers an initiator port through
// both; a registration without it covers only its own port; a standby
// port passes PERSISTENT RESERVE IN and OUT to the active port's unit
// (PassReservations), except PREEMPT AND ABORT.
func TestReservationsAcrossPorts(t *testing.T) {
	ctx := context.Background()
	onPort := func(n Nexus, port uint16) Nexus {
		n.TargetPort, n.RelativePortID, n.PortGroup = fmt.Sprintf("iqn.t,t,0x%x", port), port, port
		return n
	}
	a1, a2, b1, b2 := onPort(nexusA, 1), onPort(nexusA, 2), onPort(nexusB, 1), onPort(nexusB, 2)
	groups := func(active uint16) []PortGroup {
		g := []PortGroup{{ID: 1, State: Standby, Ports: []uint16{1}}, {ID: 2, State: Standby, Ports: []uint16{2}}}
		g[active-1].State = ActiveOptimized
		return g
	}
	// The active port's unit (port 1) and the standby one (port 2), as
	// two nodes have them.
	primary, err := NewLogicalUnit(LUConfig{Device: newMem(1 << 20), Reservations: &memStore{}})
	if err != nil {
		t.Fatal(err)
	}
	primary.SetPortGroups(groups(1))
	pt, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: primary}})
	passed := 0
	standby, err := NewLogicalUnit(LUConfig{Device: newMem(1 << 20), PassReservations: func(ctx context.Context, cmd *Command) (Result, error) {
		passed++
		c := *cmd
		return pt.ExecutePassed(ctx, &c), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	standby.SetPortGroups(groups(1))
	st, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: standby}})
	for _, n := range []Nexus{a1, b1} {
		pt.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)})
	}
	for _, n := range []Nexus{a2, b2} {
		st.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)})
		st.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)})
	}
	const allTgPt = 0x04
	write := cdb10(0x2a, 0, 1)
	steps := []struct {
		name   string
		tg     *Target
		n      Nexus
		cdb    []byte
		out    []byte
		status Status
		asc    uint16
	}{
		{"1 A registers through port 1 for every port", pt, a1, nil, nil, StatusGood, 0},
		{"2 B registers through the standby port 2 (passed)", st, b2, nil, nil, StatusGood, 0},
		{"3 A reserves write exclusive, registrants only", pt, a1, nil, nil, StatusGood, 0},
		{"4 PREEMPT AND ABORT through the standby port is not passed", st, b2, nil, nil, StatusCheckCondition, ascStandby},
	}
	steps[0].cdb, steps[0].out = prout(0, 0, 0, 0xa, allTgPt)
	steps[1].cdb, steps[1].out = prout(0, 0, 0, 0xb, 0)
	steps[2].cdb, steps[2].out = prout(1, 5, 0xa, 0, 0)
	steps[3].cdb, steps[3].out = prout(5, 5, 0xb, 0xa, 0)
	for _, s := range steps {
		r := s.tg.Execute(ctx, &Command{Nexus: s.n, CDB: s.cdb, DataOut: s.out})
		if _, asc := senseOf(r); r.Status != s.status || asc != s.asc {
			t.Fatalf("%s: status %#x asc %04x, want %#x %04x", s.name, r.Status, asc, s.status, s.asc)
		}
	}
	if passed != 1 {
		t.Errorf("%d commands passed to the active port, want 1 (REGISTER)", passed)
	}
	// READ KEYS through the standby port: passed, both keys.
	r := st.Execute(ctx, &Command{Nexus: b2, CDB: prin(0)})
	if r.Status != StatusGood || len(r.Data) != 8+16 {
		t.Fatalf("READ KEYS through the standby port: status %#x, % x", r.Status, r.Data)
	}
	// READ FULL STATUS: ALL_TG_PT only on A's registration.
	r = pt.Execute(ctx, &Command{Nexus: a1, CDB: []byte{0x5e, 3, 0, 0, 0, 0, 0, 1, 0, 0}})
	d := r.Data[8:]
	for len(d) >= 24 {
		key, all := binary.BigEndian.Uint64(d), d[12]&0x02 != 0
		if all != (key == 0xa) {
			t.Errorf("READ FULL STATUS: key %#x ALL_TG_PT %v", key, all)
		}
		d = d[24+int(binary.BigEndian.Uint32(d[20:])):]
	}
	// B registered through port 2 only: through port 1 it is not.
	if r := pt.Execute(ctx, &Command{Nexus: b1, CDB: write, DataOut: make([]byte, 512)}); r.Status != StatusReservationConflict {
		t.Errorf("B writes through port 1, where it is not registered: status %#x, want RESERVATION CONFLICT", r.Status)
	}
	// The volume moves: port 2 is the active one now, with the state the
	// primary kept (as a promoted node reloads it from the catalog).
	primary.SetPortGroups(groups(2))
	b, _ := json.Marshal(&primary.pr.st)
	moved, _ := NewLogicalUnit(LUConfig{Device: newMem(1 << 20), Reservations: &memStore{b: b}})
	moved.SetPortGroups(groups(2))
	mt, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: moved}})
	for _, s := range []struct {
		name   string
		n      Nexus
		status Status
	}{
		{"A writes through port 2 (registered for every port)", a2, StatusGood},
		{"B writes through port 2 (registered through it)", b2, StatusGood},
	} {
		mt.Execute(ctx, &Command{Nexus: s.n, CDB: make([]byte, 6)})
		if r := mt.Execute(ctx, &Command{Nexus: s.n, CDB: write, DataOut: make([]byte, 512)}); r.Status != s.status {
			t.Errorf("%s: status %#x, want %#x", s.name, r.Status, s.status)
		}
	}
}

// TestReloadReservationsRaisesUnitAttentions: a change made through
// another node (the catalog's state reloaded here) reaches this unit's
// nexuses as unit attentions: preempted registrations, a released
// registrants-only reservation.
func TestReloadReservationsRaisesUnitAttentions(t *testing.T) {
	ctx := context.Background()
	store := &memStore{}
	here, _ := NewLogicalUnit(LUConfig{Device: newMem(1 << 20), Reservations: store})
	ht, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: here}})
	there, _ := NewLogicalUnit(LUConfig{Device: newMem(1 << 20), Reservations: store})
	tt, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: there}})
	for _, n := range []Nexus{nexusA, nexusB, nexusC} {
		ht.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)})
		tt.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)})
	}
	run := func(tg *Target, n Nexus, cdb, out []byte) {
		if r := tg.Execute(ctx, &Command{Nexus: n, CDB: cdb, DataOut: out}); r.Status != StatusGood {
			t.Fatalf("% x: status %#x", cdb, r.Status)
		}
	}
	reload := func() {
		if err := here.ReloadReservations(); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(n Nexus, asc uint16) {
		t.Helper()
		r := ht.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)})
		if _, got := senseOf(r); asc == 0 && r.Status != StatusGood || asc != 0 && got != asc {
			t.Errorf("%s: status %#x asc %04x, want asc %04x", n.InitiatorPort, r.Status, got, asc)
		}
	}
	for _, n := range []Nexus{nexusA, nexusB, nexusC} {
		cdb, p := prout(0, 0, 0, uint64(n.InitiatorPort[4]), 0) // keys 'a', 'b', 'c'
		run(tt, n, cdb, p)
	}
	cdb, p := prout(1, 5, 'a', 0, 0) // A reserves, registrants only
	run(tt, nexusA, cdb, p)
	reload()
	expect(nexusA, 0)
	cdb, p = prout(4, 5, 'b', 'c', 0) // B preempts C
	run(tt, nexusB, cdb, p)
	reload()
	expect(nexusC, ascRegistrationsPreempted)
	expect(nexusA, 0)
	cdb, p = prout(2, 5, 'a', 0, 0) // A releases
	run(tt, nexusA, cdb, p)
	reload()
	expect(nexusB, ascReservationsReleased)
}
