// Package scsi executes SCSI commands (SPC-4, SBC-3) against logical units
// backed by block.Device. It parses every CDB itself and hands devices only
// byte ranges, so storage never sees SCSI and the transport never sees CDBs.
//
// Execute runs one generic pipeline before any command handler, as tgt and
// LIO do: CDB length, LUN existence, pending unit attentions; then dispatches
// through an opcode table. Every failure is a *SenseError, returned as CHECK
// CONDITION with fixed-format sense data. Nothing here panics on input.
package scsi

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// TargetConfig configures a Target.
type TargetConfig struct {
	// LUNs maps LUN numbers to logical units.
	LUNs   map[uint64]*LogicalUnit
	Logger *slog.Logger
}

// Target is the SCSI target device of one iSCSI target: its logical units
// and the per-I_T-nexus state (unit attentions).
type Target struct {
	log  *slog.Logger
	luns map[uint64]*LogicalUnit
	ids  []uint64

	mu      sync.RWMutex // protects nexuses
	nexuses map[Nexus]*nexusState
}

// nexusState holds what is kept per I_T nexus.
type nexusState struct {
	pending atomic.Int32 // len(ua), read without the lock on the I/O path
	mu      sync.Mutex   // protects ua
	ua      []uint16     // pending unit attention ASC/ASCQs, oldest first
}

// NewTarget returns a target serving the given logical units.
func NewTarget(cfg TargetConfig) (*Target, error) {
	if len(cfg.LUNs) == 0 {
		return nil, fmt.Errorf("scsi: a target needs at least one logical unit")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Target{log: cfg.Logger, luns: make(map[uint64]*LogicalUnit), nexuses: make(map[Nexus]*nexusState)}
	for id, lu := range cfg.LUNs {
		if lu == nil {
			return nil, fmt.Errorf("scsi: LUN %d is nil", id)
		}
		if id > 16383 {
			return nil, fmt.Errorf("scsi: LUN %d beyond the flat addressing range 0..16383", id)
		}
		t.luns[id] = lu
		t.ids = append(t.ids, id)
	}
	sort.Slice(t.ids, func(i, j int) bool { return t.ids[i] < t.ids[j] })
	for _, lu := range t.luns {
		lu.pr.ua = t.uaFor
		lu.pr.ports = t.initiatorPorts
		lu.ua = t.uaExcept
	}
	return t, nil
}

// LUNs lists the target's LUN numbers in order.
func (t *Target) LUNs() []uint64 { return append([]uint64(nil), t.ids...) }

// nexus returns the state of n, creating it on first sight with a POWER ON
// unit attention (SAM-5 §6.3.2: a new I_T nexus sees one).
func (t *Target) nexus(n Nexus) *nexusState {
	t.mu.RLock()
	ns := t.nexuses[n]
	t.mu.RUnlock()
	if ns != nil {
		return ns
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if ns = t.nexuses[n]; ns == nil {
		ns = &nexusState{ua: []uint16{ascPowerOnReset}}
		ns.pending.Store(1)
		t.nexuses[n] = ns
	}
	return ns
}

func (ns *nexusState) addUA(asc uint16) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	for _, a := range ns.ua {
		if a == asc {
			return
		}
	}
	ns.ua = append(ns.ua, asc)
	ns.pending.Store(int32(len(ns.ua)))
}

// takeUA removes and returns the oldest pending unit attention.
func (ns *nexusState) takeUA() (uint16, bool) {
	if ns.pending.Load() == 0 {
		return 0, false
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if len(ns.ua) == 0 {
		return 0, false
	}
	a := ns.ua[0]
	ns.ua = ns.ua[1:]
	ns.pending.Store(int32(len(ns.ua)))
	return a, true
}

// NexusLost forgets an I_T nexus (its session ended).
func (t *Target) NexusLost(n Nexus) {
	t.mu.Lock()
	delete(t.nexuses, n)
	t.mu.Unlock()
	for _, lu := range t.luns {
		lu.pr.nexusLost(itOf(n))
		lu.copyIns.fence(&n)
	}
}

// uaFor establishes a unit attention for the nexuses of one initiator port
// and target port (a reservation change that concerns them).
func (t *Target) uaFor(n itNexus, asc uint16) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for other, ns := range t.nexuses {
		// No target port: the initiator port through every one (ALL_TG_PT).
		if o := itOf(other); o == n || n.Target == "" && o.Initiator == n.Initiator {
			ns.addUA(asc)
		}
	}
}

// initiatorPorts lists the initiator ports of initiator name that have a
// nexus with targetPort.
func (t *Target) initiatorPorts(name, targetPort string) []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []string
	for n := range t.nexuses {
		if n.TargetPort == targetPort && strings.HasPrefix(n.InitiatorPort, name+iscsiPortSep) && !slices.Contains(out, n.InitiatorPort) {
			out = append(out, n.InitiatorPort)
		}
	}
	return out
}

// uaExcept establishes a unit attention for every known nexus but skip
// (nil: every nexus).
func (t *Target) uaExcept(skip *Nexus, asc uint16) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for n, ns := range t.nexuses {
		if skip == nil || n != *skip {
			ns.addUA(asc)
		}
	}
}

// LUNReset records a LOGICAL UNIT RESET by n: every nexus, n included,
// sees BUS DEVICE RESET FUNCTION OCCURRED (SAM-5 §7.7: the reset concerns
// every I_T nexus; multipath initiators rely on all paths seeing it).
// Aborting the tasks is the transport's part.
func (t *Target) LUNReset(n Nexus, lun uint64) error {
	if _, ok := t.luns[lun]; !ok {
		return fmt.Errorf("scsi: LUN reset of LUN %d: %w", lun, errLUNotSupport)
	}
	t.luns[lun].copyIns.fence(nil)
	t.UnitAttention(ascBusDeviceReset)
	t.luns[lun].pr.reset()
	return nil
}

// TargetReset records a target warm or cold reset by n.
func (t *Target) TargetReset(n Nexus, cold bool) error {
	asc := uint16(ascTargetReset)
	if cold {
		asc = ascPowerOnReset
	}
	for _, lu := range t.luns {
		lu.copyIns.fence(nil)
	}
	t.uaExcept(&n, asc)
	for _, lu := range t.luns {
		lu.pr.reset()
	}
	return nil
}

// UnitAttention establishes a unit attention (ASC<<8|ASCQ) for every nexus,
// e.g. CAPACITY DATA HAS CHANGED after a resize.
func (t *Target) UnitAttention(asc uint16) {
	t.uaExcept(nil, asc)
}

// Opcodes exempt from unit attention reporting (SAM-5 §5.14): the initiator
// must be able to learn about the device and fetch sense data.
func uaExempt(op byte) bool { return op == opInquiry || op == opReportLUNs || op == opRequestSense }

// Execute runs one command. It never panics and always returns a valid
// status.
func (t *Target) Execute(ctx context.Context, cmd *Command) (res Result) {
	defer func() {
		if r := recover(); r != nil {
			// A handler bug must not take the node down; the initiator
			// gets a target failure and the log says where.
			t.log.Error("scsi: handler panic", "cdb", fmt.Sprintf("% x", cmd.CDB), "panic", r)
			res = checkCondition(sense(KeyHardwareError, ascInternalTargetFailure))
		}
	}()
	if len(cmd.CDB) == 0 {
		return checkCondition(errInvalidOpcode)
	}
	op := cmd.CDB[0]
	ns := t.nexus(cmd.Nexus)
	lu, ok := t.luns[cmd.LUN]
	switch {
	case op == opReportLUNs:
		return t.reportLUNs(cmd)
	case op == opRequestSense && !ok:
		return requestSense(cmd, ns, sense(KeyIllegalRequest, ascLUNotSupported))
	case op == opInquiry && !ok:
		return inquiryNoLUN(cmd)
	case !ok:
		return checkCondition(errLUNotSupport)
	}
	if op == opRequestSense {
		return requestSense(cmd, ns, nil)
	}
	var asc uint16
	var pending bool
	if !uaExempt(op) {
		asc, pending = ns.takeUA()
	}
	if pending {
		res = checkCondition(sense(KeyUnitAttention, asc))
	} else {
		res = lu.execute(ctx, cmd)
	}
	if res.Status == StatusCheckCondition && lu.descriptorSense.Load() {
		res.Sense = descriptorSense(res.Sense)
	}
	return res
}

// ExecutePassed runs a command another port of the unit passed here
// (LUConfig.PassReservations on another node): for the nexus it came
// through, with no unit attention of its own (that nexus's are kept where
// it is), no check of this port's access state, and sense data in fixed
// format (the port it came through gives it the format set there).
func (t *Target) ExecutePassed(ctx context.Context, cmd *Command) (res Result) {
	defer func() {
		if r := recover(); r != nil {
			t.log.Error("scsi: handler panic", "cdb", fmt.Sprintf("% x", cmd.CDB), "panic", r)
			res = checkCondition(sense(KeyHardwareError, ascInternalTargetFailure))
		}
	}()
	lu, ok := t.luns[cmd.LUN]
	switch {
	case len(cmd.CDB) == 0:
		return checkCondition(errInvalidOpcode)
	case !ok:
		return checkCondition(errLUNotSupport)
	}
	cmd.Passed = true
	return lu.execute(ctx, cmd)
}

func checkCondition(e *SenseError) Result {
	return Result{Status: StatusCheckCondition, Sense: e.Fixed()}
}

// reportLUNs answers REPORT LUNS (SPC-4 §6.33).
func (t *Target) reportLUNs(cmd *Command) Result {
	cdb := cmd.CDB
	if len(cdb) < 12 {
		return checkCondition(errInvalidOpcode)
	}
	switch cdb[2] {
	case 0x00, 0x01, 0x02:
	default:
		return checkCondition(invalidField(2, -1))
	}
	alloc := be32(cdb[6:])
	if alloc < 16 {
		return checkCondition(invalidField(6, -1))
	}
	ids := t.ids
	if cdb[2] == 0x01 {
		ids = nil // no well-known logical units
	}
	data := make([]byte, 8+8*len(ids))
	put32(data, uint32(8*len(ids)))
	for i, id := range ids {
		data[8+8*i], data[9+8*i] = EncodeLUN(id)
	}
	return Result{Data: clip(data, alloc)}
}

// EncodeLUN returns the first two bytes of a LUN in SAM-5 addressing:
// peripheral device addressing below 256, flat space above.
func EncodeLUN(id uint64) (byte, byte) {
	if id < 256 {
		return 0, byte(id)
	}
	return 0x40 | byte(id>>8)&0x3f, byte(id)
}

func clip(b []byte, alloc uint32) []byte {
	if uint32(len(b)) > alloc {
		return b[:alloc]
	}
	return b
}
