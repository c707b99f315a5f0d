package appliance

import (
	"slices"
	"testing"

	"tandem.io/tandem/target/iscsi"
	"tandem.io/tandem/target/scsi"
)

// Which sessions an EXTENDED COPY may reach another volume through: the
// copying initiator's own, logged in to that volume's target, from the
// same host; the copy's own initiator port first.
func TestCopyNexuses(t *testing.T) {
	const a, b = "iqn.t:a", "iqn.t:b"
	isid1, isid2 := [6]byte{0x80, 0, 0, 0, 0, 1}, [6]byte{0x80, 0, 0, 0, 0, 2}
	nx := func(initiator string, isid [6]byte, target string) scsi.Nexus {
		return scsi.Nexus{InitiatorPort: scsi.IPortName(initiator, isid), TargetPort: target + ",t,0x1", RelativePortID: 1, PortGroup: 1}
	}
	sess := func(initiator string, isid [6]byte, target, addr string) iscsi.SessionNexus {
		return iscsi.SessionNexus{Target: target, Initiator: initiator, Nexus: nx(initiator, isid, target), RemoteAddr: addr}
	}
	xA := sess("iqn.x", isid1, a, "10.0.0.5:40001")
	xB1 := sess("iqn.x", isid1, b, "10.0.0.5:40002")
	xB2 := sess("iqn.x", isid2, b, "10.0.0.5:40003")
	xBUpper := sess("IQN.X", isid1, b, "10.0.0.5:40004")
	yB := sess("iqn.y", isid1, b, "10.0.0.6:40001")
	xBElsewhere := sess("iqn.x", isid1, b, "10.0.0.9:40001") // the name, from another host
	xA6 := sess("iqn.x", isid1, a, "[fd00::5]:40001")
	xB6 := sess("iqn.x", isid2, b, "[fd00::5]:40002")
	tests := []struct {
		name     string
		sessions []iscsi.SessionNexus
		from     scsi.Nexus
		want     []scsi.Nexus
	}{
		{"1 logged in to both", []iscsi.SessionNexus{xA, xB1, yB}, xA.Nexus, []scsi.Nexus{xB1.Nexus}},
		{"2 not logged in to b", []iscsi.SessionNexus{xA, yB}, xA.Nexus, nil},
		{"3 the copy's own port first", []iscsi.SessionNexus{xA, xB2, xB1}, xA.Nexus, []scsi.Nexus{xB1.Nexus, xB2.Nexus}},
		{"4 another host with x's name", []iscsi.SessionNexus{xA, xBElsewhere, yB}, xA.Nexus, nil},
		{"5 names compare without case", []iscsi.SessionNexus{xA, xBUpper}, xA.Nexus, []scsi.Nexus{xBUpper.Nexus}},
		{"6 the copy's own session is gone", []iscsi.SessionNexus{xB1}, xA.Nexus, nil},
		{"7 IPv6", []iscsi.SessionNexus{xA6, xB6}, xA6.Nexus, []scsi.Nexus{xB6.Nexus}},
		{"8 no address", []iscsi.SessionNexus{{Target: a, Initiator: "iqn.x", Nexus: xA.Nexus}, {Target: b, Initiator: "iqn.x", Nexus: xB1.Nexus}}, xA.Nexus, nil},
	}
	for _, tc := range tests {
		if got := copyNexuses(tc.sessions, tc.from, b); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
