package scsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"
)

// Review 12: persistent reservations across target ports (ALL_TG_PT,
// commands passed from a standby port, reservations reloaded elsewhere).

// review12Port is n through target port p (one per cluster node).
func review12Port(n Nexus, p uint16) Nexus {
	n.TargetPort, n.RelativePortID, n.PortGroup = fmt.Sprintf("iqn.t,t,0x%x", p), p, p
	return n
}

// review12Units is a unit served through two ports, as two nodes have it:
// port 1 active (the primary's unit, pt), port 2 standby (st), which
// passes PERSISTENT RESERVE IN and OUT to pt and reloads the shared store
// (the catalog) when asked.
func review12Units(t *testing.T) (primary, standby *LogicalUnit, pt, st *Target, store *memStore) {
	t.Helper()
	groups := []PortGroup{{ID: 1, State: ActiveOptimized, Ports: []uint16{1}}, {ID: 2, State: Standby, Ports: []uint16{2}}}
	store = &memStore{}
	primary, err := NewLogicalUnit(LUConfig{Device: newMem(1 << 20), Reservations: store})
	if err != nil {
		t.Fatal(err)
	}
	primary.SetPortGroups(groups)
	pt, _ = NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: primary}})
	standby, err = NewLogicalUnit(LUConfig{Device: newMem(1 << 20), Reservations: store,
		PassReservations: func(ctx context.Context, cmd *Command) (Result, error) {
			c := *cmd
			return pt.ExecutePassed(ctx, &c), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	standby.SetPortGroups(groups)
	st, _ = NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: standby}})
	for _, n := range []Nexus{nexusA, nexusB, nexusC} {
		pt.Execute(context.Background(), &Command{Nexus: review12Port(n, 1), CDB: make([]byte, 6)})
		st.Execute(context.Background(), &Command{Nexus: review12Port(n, 2), CDB: make([]byte, 6)})
	}
	return primary, standby, pt, st, store
}

// TestReview12UnregisteringTheHolderReleasesItsReservation: SPC-4
// §5.13.11.2.? (unregistering): when the persistent reservation holder's
// I_T nexus is unregistered, the reservation is released. With ALL_TG_PT
// the registration made through port 1 also registers the nexus through
// port 2; a host that reserved through port 2 and then unregisters (through
// either port) leaves a reservation held by an I_T nexus no longer
// registered: unregister compared the holder with the registration's own
// nexus (port 1), not with the nexuses it covers. Nobody but CLEAR can end
// it (RELEASE needs a registered key, PREEMPT the holder's key), and the
// unregistered holder still writes through port 2.
func TestReview12UnregisteringTheHolderReleasesItsReservation(t *testing.T) {
	ctx := context.Background()
	a1, a2, b1 := review12Port(nexusA, 1), review12Port(nexusA, 2), review12Port(nexusB, 1)
	for _, tc := range []struct {
		name       string
		unregister Nexus // the port A unregisters through
	}{
		{"unregister through the port it reserved through", a2},
		{"unregister through the port it registered through", a1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lu, err := NewLogicalUnit(LUConfig{Device: newMem(1 << 20), Reservations: &memStore{}})
			if err != nil {
				t.Fatal(err)
			}
			tg, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: lu}})
			for _, n := range []Nexus{a1, a2, b1} {
				tg.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)})
			}
			do := func(n Nexus, cdb, out []byte) Result {
				return tg.Execute(ctx, &Command{Nexus: n, CDB: cdb, DataOut: out, ExpectedLength: 512})
			}
			must := func(what string, n Nexus, cdb, out []byte) {
				t.Helper()
				if r := do(n, cdb, out); r.Status != StatusGood {
					k, asc := senseOf(r)
					t.Fatalf("%s: status %#x %x/%04x", what, r.Status, k, asc)
				}
			}
			cdb, p := prout(0, 0, 0, 0xa, 0x04) // A registers for every port
			must("A registers (ALL_TG_PT) through port 1", a1, cdb, p)
			cdb, p = prout(0, 0, 0, 0xb, 0)
			must("B registers through port 1", b1, cdb, p)
			cdb, p = prout(1, 1, 0xa, 0, 0) // Write Exclusive
			must("A reserves through port 2", a2, cdb, p)
			cdb, p = prout(0, 0, 0xa, 0, 0)
			must("A unregisters", tc.unregister, cdb, p)

			r := do(a1, prin(1), nil) // READ RESERVATION
			if r.Status != StatusGood || len(r.Data) < 8 || binary.BigEndian.Uint32(r.Data[4:]) != 0 {
				t.Errorf("READ RESERVATION after the holder unregistered: status %#x, % x; want no reservation", r.Status, r.Data)
			}
			if r := do(a2, cdb10(0x2a, 0, 1), make([]byte, 512)); r.Status != StatusReservationConflict && lu.pr.st.Type != 0 {
				t.Errorf("the unregistered former holder still writes through port 2 (status %#x) under a reservation nobody can release", r.Status)
			}
			cdb, p = prout(1, 1, 0xb, 0, 0)
			if r := do(b1, cdb, p); r.Status != StatusGood {
				t.Errorf("B reserves once A is gone: status %#x, want GOOD", r.Status)
			}
		})
	}
}

// TestReview12ReadFullStatusShowsTheHolder: a host registered with
// ALL_TG_PT through port 1 reserves through port 2 (its nexus there is
// registered by the ALL_TG_PT registration). READ FULL STATUS must show a
// reservation holder (R_HOLDER) with the reservation's type; it showed
// none, because it compared the holder with each registration's own nexus.
func TestReview12ReadFullStatusShowsTheHolder(t *testing.T) {
	ctx := context.Background()
	_, _, pt, st, _ := review12Units(t)
	a1, a2 := review12Port(nexusA, 1), review12Port(nexusA, 2)
	cdb, p := prout(0, 0, 0, 0xa, 0x04)
	if r := pt.Execute(ctx, &Command{Nexus: a1, CDB: cdb, DataOut: p}); r.Status != StatusGood {
		t.Fatalf("REGISTER: %#x", r.Status)
	}
	cdb, p = prout(1, 5, 0xa, 0, 0) // Write Exclusive – Registrants Only, through the standby port (passed)
	if r := st.Execute(ctx, &Command{Nexus: a2, CDB: cdb, DataOut: p}); r.Status != StatusGood {
		k, asc := senseOf(r)
		t.Fatalf("RESERVE through port 2: %#x %x/%04x", r.Status, k, asc)
	}
	r := pt.Execute(ctx, &Command{Nexus: a1, CDB: []byte{0x5e, 3, 0, 0, 0, 0, 0, 1, 0, 0}})
	if r.Status != StatusGood || len(r.Data) < 8 {
		t.Fatalf("READ FULL STATUS: %#x", r.Status)
	}
	holders := 0
	for d := r.Data[8:]; len(d) >= 24; d = d[24+int(binary.BigEndian.Uint32(d[20:])):] {
		if d[12]&0x01 != 0 {
			holders++
			if d[13] != 5 || binary.BigEndian.Uint64(d) != 0xa {
				t.Errorf("holder descriptor: key %#x type %#x, want 0xa type 5", binary.BigEndian.Uint64(d), d[13])
			}
		}
	}
	if holders != 1 {
		t.Errorf("READ FULL STATUS names %d reservation holders, want 1 (A holds a Write Exclusive – Registrants Only reservation): % x", holders, r.Data)
	}
}

// TestReview12PreemptAndAbortStopsCopiesOfAnAllPortsVictim: PREEMPT AND
// ABORT names a victim registered with ALL_TG_PT by its initiator port
// alone (every target port); the transport aborts its tasks through every
// port (abortTasksOf), but the unit's fence of copies writing into it
// (EXTENDED COPY sent to another unit by the victim) compared the target
// port exactly, so the victim's copy kept writing after PREEMPT AND ABORT
// returned GOOD.
func TestReview12PreemptAndAbortStopsCopiesOfAnAllPortsVictim(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		flags byte
	}{
		{"victim registered through its port", 0},
		{"victim registered for every port (ALL_TG_PT)", 0x04},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := prTarget(t, &memStore{})
			lu := tg.luns[0]
			steps := []struct {
				n           Nexus
				action, typ byte
				key, saKey  uint64
				flags       byte
			}{{nexusA, 0, 0, 0, 0xa, 0}, {nexusB, 0, 0, 0, 0xb, tc.flags}, {nexusB, 1, 1, 0xb, 0, 0}}
			for _, s := range steps {
				cdb, p := prout(s.action, s.typ, s.key, s.saKey, s.flags)
				if r := tg.Execute(ctx, &Command{Nexus: s.n, CDB: cdb, DataOut: p}); r.Status != StatusGood {
					t.Fatalf("setup: status %#x", r.Status)
				}
			}
			// B's copy, sent to another unit, writes into this one through
			// B's nexus here.
			stopped := make(chan struct{})
			in := &copyIn{via: []Nexus{nexusB}, done: make(chan struct{})}
			in.cancel = func() {
				select {
				case <-stopped:
				default:
					close(stopped)
					close(in.done)
				}
			}
			lu.copyIns.add(in)
			cdb, p := prout(5, 1, 0xa, 0xb, 0)
			if r := tg.Execute(ctx, &Command{Nexus: nexusA, CDB: cdb, DataOut: p}); r.Status != StatusGood {
				t.Fatalf("PREEMPT AND ABORT: status %#x", r.Status)
			}
			select {
			case <-stopped:
			case <-time.After(10 * time.Millisecond):
				t.Error("PREEMPT AND ABORT of B returned while B's copy into the unit still runs")
			}
		})
	}
}

// TestReview12ReloadRaisesNoUnitAttentionForTheChangersOwnNexus: a
// reservation change made through a standby port is run by the primary,
// which raises the unit attentions SPC-4 asks for on its own nexuses, and
// reaches the standby's nexuses when the standby reloads the state. The
// nexus that made the change gets none (it knows what it did): not when
// it unregisters itself, releases a registrants-only reservation, clears,
// or moves its reservation away with UNREG. The reload raised
// REGISTRATIONS PREEMPTED / RESERVATIONS RELEASED for it, a spurious unit
// attention telling a cluster node it was fenced when it left on its own.
// Others get what the primary gives its own: for CLEAR, RESERVATIONS
// PREEMPTED (SPC-4 §5.13.11.? clearing), not REGISTRATIONS PREEMPTED.
func TestReview12ReloadRaisesNoUnitAttentionForTheChangersOwnNexus(t *testing.T) {
	ctx := context.Background()
	a2, b2, c2 := review12Port(nexusA, 2), review12Port(nexusB, 2), review12Port(nexusC, 2)
	reg := func(n Nexus, key uint64, flags byte) step12 {
		cdb, p := prout(0, 0, 0, key, flags)
		return step12{n, cdb, p}
	}
	rmove := func(n Nexus, key, saKey uint64, dest string) step12 {
		tid := transportID(dest)
		p := make([]byte, 24+len(tid))
		binary.BigEndian.PutUint64(p, key)
		binary.BigEndian.PutUint64(p[8:], saKey)
		p[17] = 0x02 // UNREG
		binary.BigEndian.PutUint16(p[18:], n.RelativePortID)
		binary.BigEndian.PutUint32(p[20:], uint32(len(tid)))
		copy(p[24:], tid)
		return step12{n, []byte{0x5f, 7, 5, 0, 0, 0, 0, 0, byte(len(p)), 0}, p}
	}
	act := func(n Nexus, action, typ byte, key, saKey uint64) step12 {
		cdb, p := prout(action, typ, key, saKey, 0)
		return step12{n, cdb, p}
	}
	for _, tc := range []struct {
		name   string
		setup  []step12
		change step12
		// want: the unit attention each standby nexus gets (0: none).
		want map[Nexus]uint16
	}{
		{"A unregisters itself", []step12{reg(a2, 0xa, 0), reg(b2, 0xb, 0)},
			act(a2, 0, 0, 0xa, 0), map[Nexus]uint16{a2: 0, b2: 0}},
		{"A (ALL_TG_PT) unregisters itself", []step12{reg(a2, 0xa, 0x04), reg(b2, 0xb, 0)},
			act(a2, 0, 0, 0xa, 0), map[Nexus]uint16{a2: 0, b2: 0}},
		{"A releases its registrants-only reservation", []step12{reg(a2, 0xa, 0), reg(b2, 0xb, 0), act(a2, 1, 5, 0xa, 0)},
			act(a2, 2, 5, 0xa, 0), map[Nexus]uint16{a2: 0, b2: ascReservationsReleased}},
		{"A clears", []step12{reg(a2, 0xa, 0), reg(b2, 0xb, 0), act(a2, 1, 5, 0xa, 0)},
			act(a2, 3, 0, 0xa, 0), map[Nexus]uint16{a2: 0, b2: ascReservationsPreempted}},
		{"A moves its reservation to C and unregisters", []step12{reg(a2, 0xa, 0), reg(b2, 0xb, 0), act(a2, 1, 5, 0xa, 0)},
			rmove(a2, 0xa, 0xc, c2.InitiatorPort), map[Nexus]uint16{a2: 0, b2: 0}},
		{"B preempts A (others still told)", []step12{reg(a2, 0xa, 0), reg(b2, 0xb, 0), act(a2, 1, 5, 0xa, 0)},
			act(b2, 4, 5, 0xb, 0xa), map[Nexus]uint16{a2: ascRegistrationsPreempted, b2: 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, standby, _, st, _ := review12Units(t)
			run := func(s step12) {
				t.Helper()
				r := st.Execute(ctx, &Command{Nexus: s.n, CDB: s.cdb, DataOut: s.out})
				if r.Status != StatusGood {
					k, asc := senseOf(r)
					t.Fatalf("% x through the standby port: status %#x %x/%04x", s.cdb[:3], r.Status, k, asc)
				}
			}
			reload := func() {
				t.Helper()
				if err := standby.ReloadReservations(); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range tc.setup {
				run(s)
				reload()
			}
			for n := range tc.want { // no unit attention left from the setup
				for st.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)}).Sense[2]&0x0f == KeyUnitAttention {
				}
			}
			run(tc.change)
			reload()
			for n, want := range tc.want {
				r := st.Execute(ctx, &Command{Nexus: n, CDB: make([]byte, 6)}) // TEST UNIT READY: NOT READY, standby, unless a unit attention is pending
				k, asc := senseOf(r)
				got := uint16(0)
				if k == KeyUnitAttention {
					got = asc
				}
				if got != want {
					t.Errorf("%s through the standby port: unit attention %04x, want %04x", n.InitiatorPort, got, want)
				}
			}
		})
	}
}

type step12 struct {
	n        Nexus
	cdb, out []byte
}

// TestReview12RegisterAndMoveByInitiatorNameThroughTheStandbyPort:
// REGISTER AND MOVE may name the destination by its initiator name alone
// (TransportID format 00); the unit takes the one initiator port of that
// name logged in through the command's target port. Through the active
// port it works; passed from a standby port, the primary looks for that
// initiator among its own port's nexuses (Target.initiatorPorts with the
// standby's target port), finds none, and refuses with INVALID FIELD IN
// PARAMETER LIST although B is logged in through the standby port.
func TestReview12RegisterAndMoveByInitiatorNameThroughTheStandbyPort(t *testing.T) {
	ctx := context.Background()
	format00 := func(name string) []byte {
		n := len(name) + 1
		n += (4 - n%4) % 4
		b := make([]byte, 4+n)
		b[0] = 0x05 // format 00, iSCSI
		binary.BigEndian.PutUint16(b[2:], uint16(n))
		copy(b[4:], name)
		return b
	}
	for _, tc := range []struct {
		name string
		port uint16
	}{
		{"through the active port", 1},
		{"through the standby port (passed)", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, pt, st, _ := review12Units(t)
			tg := pt
			if tc.port == 2 {
				tg = st
			}
			a := review12Port(nexusA, tc.port)
			for _, s := range []struct {
				action, typ byte
				key, saKey  uint64
			}{{0, 0, 0, 0xa}, {1, 1, 0xa, 0}} {
				cdb, p := prout(s.action, s.typ, s.key, s.saKey, 0)
				if r := tg.Execute(ctx, &Command{Nexus: a, CDB: cdb, DataOut: p}); r.Status != StatusGood {
					t.Fatalf("setup: status %#x", r.Status)
				}
			}
			tid := format00("iqn.b")
			p := make([]byte, 24+len(tid))
			binary.BigEndian.PutUint64(p, 0xa)
			binary.BigEndian.PutUint64(p[8:], 0xb)
			binary.BigEndian.PutUint16(p[18:], tc.port)
			binary.BigEndian.PutUint32(p[20:], uint32(len(tid)))
			copy(p[24:], tid)
			r := tg.Execute(ctx, &Command{Nexus: a, CDB: []byte{0x5f, 7, 1, 0, 0, 0, 0, 0, byte(len(p)), 0}, DataOut: p})
			if r.Status != StatusGood {
				k, asc := senseOf(r)
				t.Errorf("REGISTER AND MOVE to initiator iqn.b (logged in through port %d): status %#x %x/%04x, want GOOD", tc.port, r.Status, k, asc)
			}
		})
	}
}

// TestReview12PassedSenseFollowsTheStandbysFormat: D_SENSE (MODE SELECT,
// control page) is the unit's on each node. A command passed from a
// standby port came back in the primary's sense format, which the host
// did not ask for on that path; the standby's own setting decides it.
func TestReview12PassedSenseFollowsTheStandbysFormat(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name             string
		primary, standby bool // D_SENSE
		want             byte // response code
	}{
		{"fixed at both", false, false, 0x70},
		{"descriptor at the primary only", true, false, 0x70},
		{"descriptor at the standby only", false, true, 0x72},
		{"descriptor at both", true, true, 0x72},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primary, standby, _, st, _ := review12Units(t)
			primary.descriptorSense.Store(tc.primary)
			standby.descriptorSense.Store(tc.standby)
			cdb, p := prout(0, 0, 0, 0xa, 0)
			cdb[8] = 23 // a parameter list length other than 24
			r := st.Execute(ctx, &Command{Nexus: review12Port(nexusA, 2), CDB: cdb, DataOut: p[:23]})
			if r.Status != StatusCheckCondition || len(r.Sense) == 0 || r.Sense[0]&0x7f != tc.want {
				t.Errorf("status %#x sense % x, want response code %#x", r.Status, r.Sense, tc.want)
			}
		})
	}
}
