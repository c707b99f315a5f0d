package scsi

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// ALUA (SPC-4 §5.15): target port groups and their asymmetric access
// states. Today one node is one group, active/optimized, so by default the
// logical unit reports the nexus's own group in that state. With
// replication, every node serving a volume is a group: the appliance then
// sets the groups and their states (SetPortGroups), initiators get
// ASYMMETRIC ACCESS STATE CHANGED and read the new states with REPORT
// TARGET PORT GROUPS, and commands through a standby or unavailable group
// are refused with the matching NOT READY sense.

// AccessState is an asymmetric access state.
type AccessState uint8

// Asymmetric access states (SPC-4 table 116).
const (
	ActiveOptimized    AccessState = 0x0
	ActiveNonOptimized AccessState = 0x1
	Standby            AccessState = 0x2
	Unavailable        AccessState = 0x3
	Transitioning      AccessState = 0xf
)

// PortGroup is one target port group: its ID, state and the relative
// target port identifiers in it.
type PortGroup struct {
	ID    uint16
	State AccessState
	Ports []uint16
}

const (
	ascAccessStateChanged = 0x2a06
	ascTransitioning      = 0x040a
	ascStandby            = 0x040b
	ascUnavailable        = 0x040c
)

type alua struct {
	mu     sync.RWMutex
	groups []PortGroup // nil: the nexus's own group, active/optimized
}

// SetPortGroups replaces the logical unit's target port groups and states;
// when they differ from the ones it had, every nexus gets ASYMMETRIC
// ACCESS STATE CHANGED and SetPortGroups reports true. nil returns to the
// single-group default.
func (lu *LogicalUnit) SetPortGroups(groups []PortGroup) bool {
	lu.alua.mu.Lock()
	same := (groups == nil) == (lu.alua.groups == nil) && slices.EqualFunc(groups, lu.alua.groups, func(a, b PortGroup) bool {
		return a.ID == b.ID && a.State == b.State && slices.Equal(a.Ports, b.Ports)
	})
	if !same {
		lu.alua.groups = nil
		for _, g := range groups {
			g.Ports = slices.Clone(g.Ports)
			lu.alua.groups = append(lu.alua.groups, g)
		}
		if groups != nil && lu.alua.groups == nil {
			lu.alua.groups = []PortGroup{}
		}
	}
	lu.alua.mu.Unlock()
	if !same {
		lu.ua(nil, ascAccessStateChanged)
	}
	return !same
}

// ALUAError is the error a device returns for a command it cannot serve
// because its port group is in state st (a primary's device detached on a
// standby node): the NOT READY sense of that state, which initiators take
// as "try another path" (or, for transitioning, "try again here").
func ALUAError(st AccessState) error {
	switch st {
	case Standby:
		return sense(KeyNotReady, ascStandby)
	case Transitioning:
		return sense(KeyNotReady, ascTransitioning)
	}
	return sense(KeyNotReady, ascUnavailable)
}

// groupsFor returns the groups to report to n.
func (lu *LogicalUnit) groupsFor(n Nexus) []PortGroup {
	lu.alua.mu.RLock()
	defer lu.alua.mu.RUnlock()
	if lu.alua.groups == nil {
		return []PortGroup{{ID: n.PortGroup, State: ActiveOptimized, Ports: []uint16{n.RelativePortID}}}
	}
	return lu.alua.groups
}

// stateOf is the access state of n's port group: active/optimized unless
// the groups set say otherwise (a group they do not name is unavailable).
func (lu *LogicalUnit) stateOf(n Nexus) AccessState {
	lu.alua.mu.RLock()
	defer lu.alua.mu.RUnlock()
	if lu.alua.groups == nil {
		return ActiveOptimized
	}
	for _, g := range lu.alua.groups {
		if g.ID == n.PortGroup {
			return g.State
		}
	}
	return Unavailable
}

// accessDenied returns the NOT READY sense for a command through a port
// group whose state does not allow it (SPC-4 §5.15.2.4), nil if it may
// run. Standby allows what an initiator needs to see the unit and its
// paths (and READ CAPACITY, which Linux reads when it finds a path, as
// Linux's own target allows); unavailable and transitioning allow only
// what reports state. PERSISTENT RESERVE OUT runs only on an active path:
// the reservation state lives with the primary.
func (lu *LogicalUnit) accessDenied(n Nexus, cdb []byte) *SenseError {
	st := lu.stateOf(n)
	if st == ActiveOptimized || st == ActiveNonOptimized {
		return nil
	}
	switch cdb[0] {
	case opInquiry, opReportLUNs, opRequestSense, opMaintenanceIn, opMaintenanceOut:
		return nil
	case opModeSense6, opModeSense10, opModeSelect6, opModeSelect10, opLogSense, opLogSelect,
		opReceiveDiagnostic, opSendDiagnostic, opReadCapacity10, opPersistentReserveIn:
		if st == Standby {
			return nil
		}
	case opServiceActionIn16:
		if st == Standby && cdb[1]&0x1f == saReadCapacity16 {
			return nil
		}
	}
	return ALUAError(st).(*SenseError)
}

// passReservations passes a PERSISTENT RESERVE IN or OUT arriving through
// a standby port to where the reservations are decided
// (LUConfig.PassReservations), and reports whether it did.
func (lu *LogicalUnit) passReservations(ctx context.Context, cmd *Command) (Result, bool) {
	op := cmd.CDB[0]
	if lu.cfg.PassReservations == nil || op != opPersistentReserveIn && op != opPersistentReserveOut || lu.stateOf(cmd.Nexus) != Standby {
		return Result{}, false
	}
	if op == opPersistentReserveOut && cmd.CDB[1]&0x1f == proPreemptAbort {
		return checkCondition(sense(KeyNotReady, ascStandby)), true
	}
	passed := cmd
	if op == opPersistentReserveOut && cmd.CDB[1]&0x1f == proRegisterMove {
		passed = lu.namePortOfMove(cmd)
	}
	res, err := lu.cfg.PassReservations(ctx, passed)
	if err != nil {
		lu.log.Warn("scsi: a reservation command through a standby port could not be passed to the active one; refused as standby",
			"opcode", fmt.Sprintf("%#x", op), "err", err)
		res = checkCondition(sense(KeyNotReady, ascStandby))
	}
	if op == opPersistentReserveOut && len(cmd.CDB) >= 9 {
		res.DataOutLength = int(be32(cmd.CDB[5:]))
	}
	return res, true
}

// namePortOfMove returns a REGISTER AND MOVE to pass on with its
// destination named by initiator port (TransportID format 01) when cmd
// names it by initiator name (format 00): only this unit knows the
// initiator ports logged in through its port; the unit the command is
// passed to would look among its own. Anything else is passed as it is,
// for the unit that runs it to judge.
func (lu *LogicalUnit) namePortOfMove(cmd *Command) *Command {
	p := cmd.DataOut
	if len(p) < 24 || len(cmd.CDB) < 10 {
		return cmd
	}
	tidLen := be32(p[20:])
	if uint64(tidLen)+24 > uint64(len(p)) || uint64(tidLen)+24 > uint64(be32(cmd.CDB[5:])) {
		return cmd
	}
	name, err := parseTransportID(p[24 : 24+tidLen])
	if err != nil || strings.Contains(name, iscsiPortSep) {
		return cmd
	}
	ports := lu.pr.ports(name, cmd.Nexus.TargetPort)
	if len(ports) != 1 {
		return cmd
	}
	tid := transportID(ports[0])
	c := *cmd
	c.DataOut = append(append(slices.Clone(p[:24]), tid...), p[24+tidLen:]...)
	put32(c.DataOut[20:], uint32(len(tid)))
	c.CDB = slices.Clone(cmd.CDB)
	put32(c.CDB[5:], uint32(len(c.DataOut)))
	return &c
}

// reportTPG answers REPORT TARGET PORT GROUPS (length format).
func (lu *LogicalUnit) reportTPG(cmd *Command) (Result, *SenseError) {
	data := make([]byte, 4)
	for _, g := range lu.groupsFor(cmd.Nexus) {
		d := make([]byte, 8+4*len(g.Ports))
		d[0] = byte(g.State)
		if g.State == ActiveOptimized {
			d[0] |= 0x80 // PREF
		}
		d[1] = 0x80 | 0x08 | 0x04 | 0x02 | 0x01 // T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP
		put16(d[2:], g.ID)
		d[7] = byte(len(g.Ports))
		for i, p := range g.Ports {
			put16(d[8+4*i+2:], p)
		}
		data = append(data, d...)
	}
	put32(data, uint32(len(data)-4))
	return Result{Data: clip(data, be32(cmd.CDB[6:]))}, nil
}
