package scsi

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Persistent reservations (SPC-4 §5.13): PERSISTENT RESERVE IN and OUT, the
// conflict check every command passes, and the older RESERVE/RELEASE (6/10).
//
// The state belongs to the logical unit, not to a connection or a node: it
// is saved through a ReservationStore before PERSISTENT RESERVE OUT returns
// GOOD, and loaded when the logical unit is built, so a restarted node (and
// later, the node that takes over a volume) enforces what the initiators
// established. It is kept whatever APTPL says: for a cluster, a node restart
// is not the power loss APTPL=0 is about, and Windows and ESX clusters
// depend on reservations surviving it. APTPL is remembered and reported.

// ReservationStore keeps a logical unit's persistent reservation state. The
// state is opaque bytes; Save must be durable when it returns.
type ReservationStore interface {
	LoadReservations() ([]byte, error)
	SaveReservations(state []byte) error
}

// Reservation types (SPC-4 table 213).
const (
	prWriteExclusive       = 1
	prExclusiveAccess      = 3
	prWriteExclusiveRO     = 5
	prExclusiveAccessRO    = 6
	prWriteExclusiveAllReg = 7
	prExclusiveAccessAllRg = 8
)

// PERSISTENT RESERVE OUT service actions.
const (
	proRegister       = 0
	proReserve        = 1
	proRelease        = 2
	proClear          = 3
	proPreempt        = 4
	proPreemptAbort   = 5
	proRegisterIgnore = 6
	proRegisterMove   = 7
)

const (
	opPersistentReserveIn  = 0x5e
	opPersistentReserveOut = 0x5f
	opReserve6             = 0x16
	opRelease6             = 0x17
	opReserve10            = 0x56
	opRelease10            = 0x57
)

// itNexus names an I_T nexus for reservations (the relative port and group
// follow from the target port).
type itNexus struct {
	Initiator string `json:"initiator"`
	Target    string `json:"target"`
}

func itOf(n Nexus) itNexus { return itNexus{Initiator: n.InitiatorPort, Target: n.TargetPort} }

type registration struct {
	Nexus itNexus `json:"nexus"`
	Key   uint64  `json:"key"`
	// AllPorts (ALL_TG_PT): the initiator port is registered through every
	// target port — in a cluster, every node's — not only Nexus's.
	AllPorts bool `json:"all_ports,omitempty"`
	// RelPort is the relative target port identifier the registration came
	// through (READ FULL STATUS).
	RelPort uint16 `json:"rel_port"`
}

// prState is what is persisted.
type prState struct {
	Generation    uint32         `json:"generation"`
	APTPL         bool           `json:"aptpl"`
	Registrations []registration `json:"registrations"`
	// Type is the reservation type, 0 when there is no reservation.
	Type uint8 `json:"type,omitempty"`
	// Holder is the reserving nexus (unused for the all-registrants types).
	Holder itNexus `json:"holder,omitempty"`
	// By is the I_T nexus whose PERSISTENT RESERVE OUT made this state,
	// Action its service action: a unit that reloads the state (another
	// node's port) raises the unit attentions the change meant, as the
	// unit that made it did, for its own nexuses: none for By's.
	By     itNexus `json:"by,omitzero"`
	Action uint8   `json:"action,omitempty"`
}

// clone copies the state, registrations included (to restore it when
// saving fails).
func (st prState) clone() prState {
	st.Registrations = slices.Clone(st.Registrations)
	return st
}

// reservations is a logical unit's reservation state and its lock. Commands
// read it on every I/O (conflict check) under the read lock.
type reservations struct {
	store ReservationStore
	log   *slog.Logger
	mu    sync.RWMutex
	st    prState
	// spc2 is the holder of an SPC-2 RESERVE, nil if none. Not persistent:
	// it ends with the nexus, as SPC-2 says.
	spc2 *itNexus
	// ua establishes a unit attention for one nexus (set by the Target).
	ua func(itNexus, uint16)
	// ports lists the initiator ports of an initiator name that have a
	// nexus with the target port (set by the Target).
	ports func(name, targetPort string) []string
}

func newReservations(store ReservationStore, log *slog.Logger) (*reservations, error) {
	r := &reservations{store: store, log: log, ua: func(itNexus, uint16) {}, ports: func(string, string) []string { return nil }}
	if store == nil {
		return r, nil
	}
	b, err := store.LoadReservations()
	if err != nil {
		return nil, fmt.Errorf("scsi: loading persistent reservations: %w", err)
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &r.st); err != nil {
			return nil, fmt.Errorf("scsi: decoding persistent reservations: %w", err)
		}
	}
	return r, nil
}

// ReloadReservations reads the persistent reservation state from the
// unit's store again, for a unit that did not make the last change itself
// (another node's, whose state the catalog holds), and raises the unit
// attentions the change means for this unit's nexuses. An SPC-2
// reservation, which is not persistent, stays.
func (lu *LogicalUnit) ReloadReservations() error {
	r := lu.pr
	if r.store == nil {
		return nil
	}
	b, err := r.store.LoadReservations()
	if err != nil {
		return fmt.Errorf("scsi: loading persistent reservations: %w", err)
	}
	var st prState
	if len(b) > 0 {
		if err := json.Unmarshal(b, &st); err != nil {
			return fmt.Errorf("scsi: decoding persistent reservations: %w", err)
		}
	}
	r.mu.Lock()
	old := r.st
	r.st = st
	// What changed elsewhere reaches this unit's nexuses as the unit
	// attentions the change raised where it was made: a nexus no longer
	// registered was preempted (or cleared); a registrants reservation
	// that ended was released. The nexus that made the change gets none.
	preempted := uint16(ascRegistrationsPreempted)
	if st.Action == proClear {
		preempted = ascReservationsPreempted
	}
	for _, reg := range old.Registrations {
		if !reg.covers(st.By) && !slices.ContainsFunc(st.Registrations, func(n registration) bool { return n.Nexus == reg.Nexus }) {
			r.ua(reg.uaNexus(), preempted)
		}
	}
	if old.Type != 0 && st.Type == 0 && (registrantsOnly(old.Type) || allRegistrants(old.Type)) {
		for _, reg := range st.Registrations {
			if !reg.covers(st.By) {
				r.ua(reg.uaNexus(), ascReservationsReleased)
			}
		}
	}
	r.mu.Unlock()
	return nil
}

// save persists the state; called with mu held.
func (r *reservations) save() *SenseError {
	if r.store == nil {
		return nil
	}
	b, err := json.Marshal(&r.st)
	if err == nil {
		err = r.store.SaveReservations(b)
	}
	if err != nil {
		r.log.Error("scsi: persistent reservation state not saved; the PERSISTENT RESERVE OUT fails and the state stays as it was", "err", err)
		return sense(KeyHardwareError, ascInternalTargetFailure)
	}
	return nil
}

func (r *reservations) find(n itNexus) int {
	for i, reg := range r.st.Registrations {
		if reg.covers(n) {
			return i
		}
	}
	return -1
}

// covers reports whether the registration is n's: made through n, or by
// n's initiator port for every target port.
func (reg registration) covers(n itNexus) bool {
	return reg.Nexus == n || reg.AllPorts && reg.Nexus.Initiator == n.Initiator
}

// uaNexus is whom a unit attention for the registration goes to: its
// nexus, or (AllPorts) its initiator port through any target port.
func (reg registration) uaNexus() itNexus {
	if reg.AllPorts {
		return itNexus{Initiator: reg.Nexus.Initiator}
	}
	return reg.Nexus
}

func validType(t uint8) bool {
	switch t {
	case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRO, prExclusiveAccessRO, prWriteExclusiveAllReg, prExclusiveAccessAllRg:
		return true
	}
	return false
}

func allRegistrants(t uint8) bool {
	return t == prWriteExclusiveAllReg || t == prExclusiveAccessAllRg
}

func registrantsOnly(t uint8) bool {
	return t == prWriteExclusiveRO || t == prExclusiveAccessRO
}

// isHolder reports whether n holds the persistent reservation.
func (r *reservations) isHolder(n itNexus) bool {
	if r.st.Type == 0 {
		return false
	}
	if allRegistrants(r.st.Type) {
		return r.find(n) >= 0
	}
	return r.st.Holder == n
}

// access classes for the conflict check (SPC-4 table 53 and SBC-3 table 13).
const (
	accessAlways = iota // INQUIRY, REPORT LUNS, TEST UNIT READY, ...
	accessRead          // reads the medium or its metadata
	accessWrite         // changes the medium or the LU's state
	accessPR            // PERSISTENT RESERVE IN/OUT: their own rules
	accessSPC2          // RESERVE/RELEASE
)

func accessOf(cdb []byte) int {
	switch cdb[0] {
	case opInquiry, opReportLUNs, opRequestSense, opTestUnitReady, opReadCapacity10, opMaintenanceIn:
		return accessAlways
	case opServiceActionIn16:
		if cdb[1]&0x1f == saReadCapacity16 {
			return accessAlways
		}
		return accessRead
	case opRead6, opRead10, opRead12, opRead16, opVerify10, opVerify12, opVerify16,
		opPreFetch10, opPreFetch16, opModeSense6, opModeSense10:
		return accessRead
	case opPersistentReserveIn, opPersistentReserveOut:
		return accessPR
	case opReserve6, opRelease6, opReserve10, opRelease10:
		return accessSPC2
	}
	return accessWrite
}

// conflict reports whether n may not run the command now.
func (r *reservations) conflict(n Nexus, cdb []byte) bool {
	return r.conflictOf(n, accessOf(cdb), cdb[0])
}

// conflictOf reports whether n may not run a command of access class a
// (accessOf) and opcode op now.
func (r *reservations) conflictOf(n Nexus, a int, op byte) bool {
	if a == accessAlways {
		return false
	}
	it := itOf(n)
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.spc2 != nil && *r.spc2 != it {
		// SPC-2 reservation by another nexus: everything but the
		// always-allowed commands and RELEASE conflicts.
		return !(op == opRelease6 || op == opRelease10)
	}
	switch a {
	case accessPR:
		return false
	case accessSPC2:
		// RESERVE and RELEASE conflict while any persistent registration
		// exists (SPC-4 §5.13.3, CRH=0).
		return len(r.st.Registrations) > 0
	}
	t := r.st.Type
	if t == 0 || r.isHolder(it) {
		return false
	}
	registered := r.find(it) >= 0
	switch t {
	case prWriteExclusive:
		return a == accessWrite
	case prExclusiveAccess:
		return true
	case prWriteExclusiveRO, prWriteExclusiveAllReg:
		return a == accessWrite && !registered
	case prExclusiveAccessRO, prExclusiveAccessAllRg:
		return !registered
	}
	return false
}

// nexusLost ends an SPC-2 reservation held by n.
func (r *reservations) nexusLost(n itNexus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.spc2 != nil && *r.spc2 == n {
		r.spc2 = nil
	}
}

// reset ends SPC-2 reservations (LUN or target reset); persistent ones stay.
func (r *reservations) reset() {
	r.mu.Lock()
	r.spc2 = nil
	r.mu.Unlock()
}

var errReservationConflict = &SenseError{Key: 0xff} // marker: RESERVATION CONFLICT status

// reserveRelease runs the SPC-2 RESERVE and RELEASE (6 and 10).
func (lu *LogicalUnit) reserveRelease(ctx context.Context, cmd *Command) (Result, *SenseError) {
	r := lu.pr
	it := itOf(cmd.Nexus)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch cmd.CDB[0] {
	case opReserve6, opReserve10:
		if cmd.CDB[0] == opReserve10 && cmd.CDB[1]&0x02 != 0 {
			return Result{}, invalidField(1, 1) // LONGID third-party: not supported
		}
		if r.spc2 != nil && *r.spc2 != it {
			return Result{}, errReservationConflict
		}
		r.spc2 = &it
	default:
		if r.spc2 != nil && *r.spc2 == it {
			r.spc2 = nil
		}
	}
	return Result{}, nil
}

// persistentReserveIn answers PERSISTENT RESERVE IN.
func (lu *LogicalUnit) persistentReserveIn(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	alloc := uint32(be16(cdb[7:]))
	r := lu.pr
	r.mu.RLock()
	defer r.mu.RUnlock()
	var data []byte
	switch cdb[1] & 0x1f {
	case 0: // READ KEYS
		data = make([]byte, 8, 8+8*len(r.st.Registrations))
		put32(data, r.st.Generation)
		for _, reg := range r.st.Registrations {
			data = binary.BigEndian.AppendUint64(data, reg.Key)
		}
		put32(data[4:], uint32(len(data)-8))
	case 1: // READ RESERVATION
		data = make([]byte, 8)
		put32(data, r.st.Generation)
		if r.st.Type != 0 {
			d := make([]byte, 16)
			if !allRegistrants(r.st.Type) {
				if i := r.find(r.st.Holder); i >= 0 {
					put64(d, r.st.Registrations[i].Key)
				}
			}
			d[13] = r.st.Type // scope LU_SCOPE (0)
			data = append(data, d...)
			put32(data[4:], 16)
		}
	case 2: // REPORT CAPABILITIES
		data = make([]byte, 8)
		put16(data, 8)
		data[2] = 0x04 | 0x01 // ATP_C, PTPL_C (SIP_C=0: no SPEC_I_PT; CRH=0)
		data[3] = 0x80        // TMV: the type mask is valid
		if r.st.APTPL {
			data[3] |= 0x01 // PTPL_A
		}
		data[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
		data[5] = 0x01                             // EX_AC_AR
	case 3: // READ FULL STATUS
		data = make([]byte, 8)
		put32(data, r.st.Generation)
		// The holder's registration: its own, or the ALL_TG_PT one of its
		// initiator port that covers it.
		holder := -1
		if r.st.Type != 0 && !allRegistrants(r.st.Type) {
			holder = r.find(r.st.Holder)
		}
		for i, reg := range r.st.Registrations {
			d := make([]byte, 24)
			put64(d, reg.Key)
			if reg.AllPorts {
				d[12] = 0x02 // ALL_TG_PT
			}
			if i == holder || r.st.Type != 0 && allRegistrants(r.st.Type) {
				d[12] |= 0x01
				d[13] = r.st.Type
			}
			put16(d[18:], reg.RelPort)
			tid := transportID(reg.Nexus.Initiator)
			put32(d[20:], uint32(len(tid)))
			data = append(append(data, d...), tid...)
		}
		put32(data[4:], uint32(len(data)-8))
	default:
		return Result{}, invalidField(1, 4)
	}
	return Result{Data: clip(data, alloc)}, nil
}

// transportID is the iSCSI TransportID (SPC-4 §7.6.4.6) of an initiator
// port "<name>,i,0x<isid>": format 01, the port name, NUL, padded to 4.
func transportID(name string) []byte {
	n := len(name) + 1
	n += (4 - n%4) % 4
	b := make([]byte, 4+n)
	b[0] = 0x40 | 0x05 // format 01, protocol iSCSI
	put16(b[2:], uint16(n))
	copy(b[4:], name)
	return b
}

// persistentReserveOut runs PERSISTENT RESERVE OUT.
func (lu *LogicalUnit) persistentReserveOut(ctx context.Context, cmd *Command) (Result, *SenseError) {
	cdb := cmd.CDB
	action := cdb[1] & 0x1f
	scope, typ := cdb[2]>>4, cdb[2]&0x0f
	plen := be32(cdb[5:])
	res := Result{DataOutLength: int(plen)}
	if action > proRegisterMove {
		return res, invalidField(1, 4)
	}
	if action == proRegisterMove {
		return res, lu.registerAndMove(cmd, scope, typ, plen)
	}
	if plen != 24 {
		return res, sense(KeyIllegalRequest, ascParamListLength)
	}
	if len(cmd.DataOut) < 24 {
		return res, sense(KeyIllegalRequest, ascParamListLength)
	}
	p := cmd.DataOut
	key, saKey := be64(p), be64(p[8:])
	specIPT, allPorts, aptpl := p[20]&0x08 != 0, p[20]&0x04 != 0, p[20]&0x01 != 0
	if specIPT {
		return res, invalidParam(20)
	}
	needsType := action == proReserve || action == proRelease || action == proPreempt || action == proPreemptAbort
	if needsType {
		if scope != 0 {
			return res, invalidField(2, 7)
		}
		if !validType(typ) {
			return res, invalidField(2, 3)
		}
	}
	it := itOf(cmd.Nexus)
	r := lu.pr
	r.mu.Lock()
	defer r.mu.Unlock()
	before := r.st.clone()
	i := r.find(it)
	registered := i >= 0
	if action != proRegisterIgnore && !(action == proRegister && !registered && key == 0) {
		if !registered || r.st.Registrations[i].Key != key {
			return res, errReservationConflict
		}
	}
	var uas []pendingUA
	switch action {
	case proRegister, proRegisterIgnore:
		if saKey == 0 {
			if registered {
				uas = r.unregister(i)
			}
		} else if registered {
			r.st.Registrations[i].Key = saKey
		} else {
			r.st.Registrations = append(r.st.Registrations, registration{Nexus: it, Key: saKey, RelPort: cmd.Nexus.RelativePortID,
				AllPorts: allPorts})
		}
		r.st.APTPL = aptpl
		r.st.Generation++
	case proReserve:
		switch {
		case r.st.Type == 0:
			r.st.Type, r.st.Holder = typ, it
		case r.isHolder(it) && r.st.Type == typ:
		default:
			return res, errReservationConflict
		}
	case proRelease:
		if r.st.Type == 0 || !r.isHolder(it) {
			break
		}
		if r.st.Type != typ {
			return res, sense(KeyIllegalRequest, ascInvalidReleaseOfPR)
		}
		uas = r.release(it)
	case proClear:
		for _, reg := range r.st.Registrations {
			if !reg.covers(it) {
				uas = append(uas, pendingUA{reg.uaNexus(), ascReservationsPreempted})
			}
		}
		r.st.Registrations, r.st.Type, r.st.Holder = nil, 0, itNexus{}
		r.st.Generation++
	case proPreempt, proPreemptAbort:
		var e *SenseError
		uas, e = r.preempt(it, saKey, typ)
		if e != nil {
			return res, e
		}
		r.st.Generation++
	}
	r.st.By, r.st.Action = it, action
	if e := r.save(); e != nil {
		r.st = before
		return res, e
	}
	for _, u := range uas {
		r.ua(u.n, u.asc)
		if action == proPreemptAbort && u.asc == ascRegistrationsPreempted {
			res.AbortNexuses = append(res.AbortNexuses, Nexus{InitiatorPort: u.n.Initiator, TargetPort: u.n.Target})
		}
	}
	return res, nil
}

type pendingUA struct {
	n   itNexus
	asc uint16
}

// unregister removes registration i and what it held: the reservation
// of a holder no longer registered (its nexus may be covered by an
// ALL_TG_PT registration made through another port).
func (r *reservations) unregister(i int) []pendingUA {
	r.st.Registrations = append(r.st.Registrations[:i], r.st.Registrations[i+1:]...)
	var uas []pendingUA
	switch {
	case r.st.Type == 0:
	case allRegistrants(r.st.Type):
		if len(r.st.Registrations) == 0 {
			r.st.Type, r.st.Holder = 0, itNexus{}
		}
	case r.find(r.st.Holder) < 0:
		if registrantsOnly(r.st.Type) {
			for _, reg := range r.st.Registrations {
				uas = append(uas, pendingUA{reg.uaNexus(), ascReservationsReleased})
			}
		}
		r.st.Type, r.st.Holder = 0, itNexus{}
	}
	return uas
}

// release ends the reservation held by n.
func (r *reservations) release(n itNexus) []pendingUA {
	var uas []pendingUA
	if registrantsOnly(r.st.Type) || allRegistrants(r.st.Type) {
		for _, reg := range r.st.Registrations {
			if !reg.covers(n) {
				uas = append(uas, pendingUA{reg.uaNexus(), ascReservationsReleased})
			}
		}
	}
	r.st.Type, r.st.Holder = 0, itNexus{}
	return uas
}

// preempt removes the registrations with key victim and, when they held the
// reservation, takes it over with type typ (SPC-4 §5.13.11.4).
func (r *reservations) preempt(n itNexus, victim uint64, typ uint8) ([]pendingUA, *SenseError) {
	var uas []pendingUA
	remove := func(match func(registration) bool) int {
		kept := r.st.Registrations[:0]
		removed := 0
		for _, reg := range r.st.Registrations {
			if !reg.covers(n) && match(reg) {
				uas = append(uas, pendingUA{reg.uaNexus(), ascRegistrationsPreempted})
				removed++
				continue
			}
			kept = append(kept, reg)
		}
		r.st.Registrations = kept
		return removed
	}
	switch {
	case r.st.Type != 0 && allRegistrants(r.st.Type) && victim == 0:
		// Everyone else loses their registration; the preemptor
		// reserves with the new type.
		remove(func(registration) bool { return true })
		r.st.Type, r.st.Holder = typ, n
		return uas, nil
	case victim == 0:
		return nil, invalidParam(8)
	}
	holderKey, hasHolder := uint64(0), false
	if r.st.Type != 0 && !allRegistrants(r.st.Type) {
		if i := r.find(r.st.Holder); i >= 0 {
			holderKey, hasHolder = r.st.Registrations[i].Key, true
		}
	}
	if hasHolder && victim == holderKey {
		remove(func(reg registration) bool { return reg.Key == victim })
		r.st.Type, r.st.Holder = typ, n
		return uas, nil
	}
	if remove(func(reg registration) bool { return reg.Key == victim }) == 0 {
		return nil, errReservationConflict
	}
	if r.st.Type != 0 && allRegistrants(r.st.Type) && len(r.st.Registrations) == 0 {
		r.st.Type = 0
	}
	return uas, nil
}

// registerAndMove runs PERSISTENT RESERVE OUT with REGISTER AND MOVE (SPC-4
// §5.13.8): the holder of the reservation registers another I_T nexus, named
// by a TransportID and a relative target port, with the service action key,
// and hands the reservation to it; with UNREG it also drops its own
// registration. Failover software uses it to pass a reservation to a standby
// host's initiator.
func (lu *LogicalUnit) registerAndMove(cmd *Command, scope, typ uint8, plen uint32) *SenseError {
	if scope != 0 {
		return invalidField(2, 7)
	}
	if !validType(typ) {
		return invalidField(2, 3)
	}
	p := cmd.DataOut
	if plen < 24 || len(p) < 24 {
		return errParamLength
	}
	key, saKey := be64(p), be64(p[8:])
	unreg, aptpl := p[17]&0x02 != 0, p[17]&0x01 != 0
	relPort := be16(p[18:])
	tidLen := be32(p[20:])
	if uint64(tidLen)+24 > uint64(plen) || uint64(tidLen)+24 > uint64(len(p)) {
		return errParamLength
	}
	it := itOf(cmd.Nexus)
	r := lu.pr
	r.mu.Lock()
	defer r.mu.Unlock()
	i := r.find(it)
	if i < 0 || r.st.Registrations[i].Key != key {
		return errReservationConflict
	}
	if saKey == 0 {
		return invalidParam(8)
	}
	name, err := parseTransportID(p[24 : 24+tidLen])
	if err != nil {
		return invalidParam(24)
	}
	if relPort != cmd.Nexus.RelativePortID {
		// One target port per target: the only port there is.
		return invalidParam(18)
	}
	if !strings.Contains(name, iscsiPortSep) {
		// Format 00 names the initiator, not its port: take the one
		// nexus that initiator has here, if it has exactly one.
		ports := r.ports(name, it.Target)
		if len(ports) != 1 {
			return invalidParam(24)
		}
		name = ports[0]
	}
	dest := itNexus{Initiator: name, Target: it.Target}
	// SPC-4: no reservation, or one the requester does not hold, or an
	// all-registrants one (held by everyone) cannot be moved.
	if r.st.Type == 0 || allRegistrants(r.st.Type) || r.st.Holder != it {
		return errReservationConflict
	}
	if dest == it {
		return invalidParam(24)
	}
	before := r.st.clone()
	if j := r.find(dest); j >= 0 {
		r.st.Registrations[j].Key = saKey
	} else {
		r.st.Registrations = append(r.st.Registrations, registration{Nexus: dest, Key: saKey, RelPort: relPort})
	}
	r.st.Type, r.st.Holder = typ, dest
	if unreg {
		r.st.Registrations = slices.DeleteFunc(r.st.Registrations, func(reg registration) bool { return reg.covers(it) && !reg.covers(dest) })
	}
	r.st.APTPL = aptpl
	r.st.Generation++
	r.st.By, r.st.Action = it, proRegisterMove
	if e := r.save(); e != nil {
		r.st = before
		return e
	}
	return nil
}

// parseTransportID reads an iSCSI TransportID (SPC-4 §7.6.4.6): format 00,
// an initiator name, or format 01, "<name>,i,0x<ISID>", which it returns in
// the form the iSCSI target names its initiator ports.
func parseTransportID(b []byte) (string, error) {
	if len(b) < 4 {
		return "", fmt.Errorf("TransportID of %d bytes", len(b))
	}
	if b[0]&0x0f != 0x05 {
		return "", fmt.Errorf("TransportID protocol %#x is not iSCSI", b[0]&0x0f)
	}
	format := b[0] >> 6
	n := int(be16(b[2:]))
	if n < 1 || 4+n > len(b) {
		return "", fmt.Errorf("TransportID additional length %d in %d bytes", n, len(b))
	}
	name, _, ok := strings.Cut(string(b[4:4+n]), "\x00")
	if !ok || name == "" {
		return "", fmt.Errorf("TransportID name not NUL-terminated")
	}
	switch format {
	case 0:
		if strings.Contains(asciiLower(name), iscsiPortSep) {
			return "", fmt.Errorf("TransportID format 00 with an ISID")
		}
		return name, nil
	case 1:
		i := strings.LastIndex(asciiLower(name), iscsiPortSep)
		if i <= 0 {
			return "", fmt.Errorf("TransportID format 01 without an ISID")
		}
		hex := name[i+len(iscsiPortSep):]
		isid, err := strconv.ParseUint(hex, 16, 48)
		if err != nil {
			return "", fmt.Errorf("TransportID ISID %q: %w", hex, err)
		}
		var b [6]byte
		for j := range b {
			b[j] = byte(isid >> (40 - 8*j))
		}
		return IPortName(name[:i], b), nil
	}
	return "", fmt.Errorf("TransportID format %d", format)
}

// asciiLower lowers A-Z only, byte by byte, so that byte offsets stay those
// of s (strings.ToLower and strings.Map rewrite invalid UTF-8).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
