package scsi

import "sync"

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
// every nexus gets ASYMMETRIC ACCESS STATE CHANGED. nil returns to the
// single-group default.
func (lu *LogicalUnit) SetPortGroups(groups []PortGroup) {
	lu.alua.mu.Lock()
	lu.alua.groups = append([]PortGroup(nil), groups...)
	lu.alua.mu.Unlock()
	lu.ua(nil, ascAccessStateChanged)
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

// accessDenied returns the NOT READY sense for a medium-access command
// through a port group that cannot serve it, nil if it may run.
func (lu *LogicalUnit) accessDenied(n Nexus, cdb []byte) *SenseError {
	if accessOf(cdb) == accessAlways || accessOf(cdb) == accessPR {
		return nil
	}
	return lu.portDenied(n)
}

// portDenied returns the NOT READY sense for medium access through n's
// port group when its state does not allow it, nil if it does.
func (lu *LogicalUnit) portDenied(n Nexus) *SenseError {
	lu.alua.mu.RLock()
	defer lu.alua.mu.RUnlock()
	for _, g := range lu.alua.groups {
		if g.ID != n.PortGroup {
			continue
		}
		switch g.State {
		case Standby:
			return sense(KeyNotReady, ascStandby)
		case Unavailable:
			return sense(KeyNotReady, ascUnavailable)
		case Transitioning:
			return sense(KeyNotReady, ascTransitioning)
		}
	}
	return nil
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
