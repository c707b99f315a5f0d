package tests

import (
	"context"
	"encoding/binary"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/target/iscsi/initiator"
)

// ALUA asymmetric access states (SPC-4 table 116) and their NOT READY
// ASC/ASCQ.
const (
	aluaOptimized     = 0x0
	aluaStandby       = 0x2
	aluaUnavailable   = 0x3
	aluaTransitioning = 0xf
	ascStandby        = 0x040b
	ascUnavailable    = 0x040c
	ascStateChanged   = 0x2a06
)

// portGroup is one descriptor of REPORT TARGET PORT GROUPS.
type portGroup struct {
	id, port uint16
	state    byte
}

// rtpg reads the port groups through s.
func rtpg(t *testing.T, s *initiator.Session) []portGroup {
	t.Helper()
	cdb := []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0}
	var r initiator.Response
	var err error
	for range 4 {
		r, err = s.Do(cdb, nil, 1024)
		if k, _ := r.SenseKey(); err != nil || r.Status != statusCheckCondition || k != 6 {
			break
		}
	}
	if err != nil || r.Status != statusGood {
		t.Fatalf("REPORT TARGET PORT GROUPS: %v status %#x", err, r.Status)
	}
	var groups []portGroup
	d := r.Data[4:]
	for len(d) >= 8 {
		g := portGroup{id: binary.BigEndian.Uint16(d[2:]), state: d[0] & 0x0f}
		n := int(d[7])
		if n > 0 && len(d) >= 12 {
			g.port = binary.BigEndian.Uint16(d[10:])
		}
		groups = append(groups, g)
		d = d[min(len(d), 8+4*n):]
	}
	return groups
}

// aluaState is the state the groups give port group id, 0xff if none.
func aluaState(groups []portGroup, id uint16) byte {
	for _, g := range groups {
		if g.id == id {
			return g.state
		}
	}
	return 0xff
}

// aluaSession logs in to the volume's target at n's portal.
func (n *node) aluaSession(t *testing.T, volume string, isid byte) *initiator.Session {
	t.Helper()
	s, err := initiator.Dial(context.Background(), initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:" + volume,
		Name: "iqn.2026-12.test:alua", ISID: [6]byte{0x40, 0, 0, 0, 9, isid}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("login at %s: %v", n.name, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// doSense runs cdb through s and returns its status and sense.
func doSense(s *initiator.Session, cdb []byte, out []byte, readLen uint32) (byte, byte, uint16, error) {
	r, err := s.Do(cdb, out, readLen)
	k, asc := r.SenseKey()
	return r.Status, k, asc, err
}

// TestClusterALUA: every data node serves the volume's target through its
// own target port, with the states ALUA prescribes, and a standby port
// becomes the active one in place when its node is promoted: a session
// logged in there before carries on, seeing ASYMMETRIC ACCESS STATE
// CHANGED, without logging in again — for a planned move and for the
// failover after the primary is killed.
//
//  1. SendTargets at any node lists the portal of both copies' nodes, each
//     with its own portal group tag; REPORT TARGET PORT GROUPS through
//     each node: the primary's group active/optimized, the replica's
//     standby, the third node's unavailable, the same everywhere;
//  2. on the replica's port, READ and TEST UNIT READY get NOT READY /
//     standby, READ CAPACITY works; on the third node's, NOT READY /
//     unavailable; INQUIRY everywhere;
//  3. move the primary to the replica: the session there gets the state
//     change, then reads and writes; the old primary's port is standby;
//  4. kill the primary: the session on the in-sync replica (a node of its
//     own) serves again once the failover lands, without a new login.
func TestClusterALUA(t *testing.T) {
	requireTool(t, "iscsi-ls")
	c := startTestCluster(t, topologies[0])
	entry := c.nodes[0]
	entry.mustCLI("volume", "create", "v", "--size", "64MiB", "--copies", "2")
	v := c.waitInSync("v", 60*time.Second)
	primary := c.node(v.Primary)
	var replica, other *node
	for _, n := range c.nodes {
		switch {
		case n.name == v.Primary:
		case slices.ContainsFunc(v.Copies, func(cp admin.Copy) bool { return cp.Node == n.name }):
			replica = n
		default:
			other = n
		}
	}
	t.Logf("primary %s, replica %s, no copy on %s", primary.name, replica.name, other.name)

	// 1. Discovery and the port groups.
	out, err := exec.Command("iscsi-ls", "iscsi://"+other.portal).CombinedOutput()
	if err != nil {
		t.Fatalf("iscsi-ls at %s: %v\n%s", other.name, err, out)
	}
	t.Logf("$ iscsi-ls iscsi://%s\n%s", other.portal, out)
	for _, n := range []*node{primary, replica} {
		if !strings.Contains(string(out), n.portal+",") {
			t.Errorf("SendTargets at %s does not list %s's portal %s", other.name, n.name, n.portal)
		}
	}
	if strings.Contains(string(out), other.portal+",") {
		t.Errorf("SendTargets lists %s's portal, which holds no copy", other.name)
	}
	tags := map[string]uint16{} // node -> portal group tag, from SendTargets
	for _, n := range []*node{primary, replica} {
		_, rest, _ := strings.Cut(string(out), n.portal+",")
		tag, err := strconv.ParseUint(strings.TrimRightFunc(strings.Fields(rest + " ")[0], func(r rune) bool { return r < '0' || r > '9' }), 10, 16)
		if err != nil {
			t.Fatalf("no portal group tag after %s in %q", n.portal, out)
		}
		tags[n.name] = uint16(tag)
	}
	if tags[primary.name] == tags[replica.name] {
		t.Errorf("%s and %s share portal group tag %d", primary.name, replica.name, tags[primary.name])
	}
	sessions := map[string]*initiator.Session{}
	for i, n := range c.nodes {
		sessions[n.name] = n.aluaSession(t, "v", byte(i))
	}
	// Every node reports the same groups once its reconciler has seen
	// the replica in sync (a pass after the catalog changed: at most about
	// a second after `volume show` says in sync).
	var ids []uint16
	var want []portGroup
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		want = rtpg(t, sessions[primary.name])
		same := true
		for _, n := range c.nodes {
			same = same && slices.Equal(rtpg(t, sessions[n.name]), want)
		}
		if same && aluaState(want, tags[replica.name]) == aluaStandby {
			break
		}
		if time.Now().After(deadline) {
			for _, n := range c.nodes {
				t.Errorf("port groups through %s: %+v", n.name, rtpg(t, sessions[n.name]))
			}
			t.Fatal("the nodes do not agree on the port groups 10 s after the volume was in sync")
		}
	}
	for _, g := range want {
		ids = append(ids, g.id)
		if g.port != g.id {
			t.Errorf("group %d holds relative port %d, want %d", g.id, g.port, g.id)
		}
	}
	if len(want) != 3 || len(slices.Compact(slices.Sorted(slices.Values(ids)))) != 3 {
		t.Fatalf("port groups %+v: want one per data node, each its own", want)
	}
	if aluaState(want, tags[primary.name]) != aluaOptimized || aluaState(want, tags[replica.name]) != aluaStandby {
		t.Fatalf("port groups %+v: want the primary's (%d) active/optimized, the replica's (%d) standby", want, tags[primary.name], tags[replica.name])
	}
	states := map[byte]int{}
	for _, g := range want {
		states[g.state]++
	}
	if states[aluaUnavailable] != 1 {
		t.Fatalf("port groups %+v: want the third node's unavailable", want)
	}
	t.Logf("port groups (id, relative port, state): %+v", want)

	// 2. What each port lets through.
	read := read16(0, 8)
	tur := make([]byte, 6)
	cap16 := []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}
	inquiry := []byte{0x12, 0, 0, 0, 96, 0}
	for _, tc := range []struct {
		n    *node
		cdb  []byte
		what string
		asc  uint16 // 0: GOOD
	}{
		{replica, read, "READ", ascStandby},
		{replica, tur, "TEST UNIT READY", ascStandby},
		{replica, cap16, "READ CAPACITY(16)", 0},
		{replica, inquiry, "INQUIRY", 0},
		{other, read, "READ", ascUnavailable},
		{other, cap16, "READ CAPACITY(16)", ascUnavailable},
		{other, inquiry, "INQUIRY", 0},
		{primary, read, "READ", 0},
	} {
		st, k, asc, err := doSense(sessions[tc.n.name], tc.cdb, nil, 4096)
		switch {
		case err != nil:
			t.Errorf("%s on %s: %v", tc.what, tc.n.name, err)
		case tc.asc == 0 && st != statusGood:
			t.Errorf("%s on %s: status %#x sense %#x/%04x, want GOOD", tc.what, tc.n.name, st, k, asc)
		case tc.asc != 0 && (st != statusCheckCondition || k != 2 || asc != tc.asc):
			t.Errorf("%s on %s: status %#x sense %#x/%04x, want NOT READY %04x", tc.what, tc.n.name, st, k, asc, tc.asc)
		}
	}

	// 3. A planned move to the replica: its session carries on.
	out2 := entry.mustCLI("volume", "move", "v", "--primary", replica.name)
	t.Logf("$ tandem volume move v --primary %s\n%s", replica.name, out2)
	s := sessions[replica.name]
	if err := untilServed(s, 10*time.Second, 1); err != nil {
		t.Fatalf("the session logged in at %s before the move: %v", replica.name, err)
	}
	groups := rtpg(t, s)
	if aluaState(groups, tags[replica.name]) != aluaOptimized {
		t.Errorf("after the move, %s's group is not active/optimized: %+v", replica.name, groups)
	}
	old := primary.aluaSession(t, "v", 7)
	if st, k, asc, _ := doSense(old, tur, nil, 0); st == statusGood || k != 2 && k != 6 {
		t.Errorf("TEST UNIT READY on the former primary %s: status %#x sense %#x/%04x, want NOT READY", primary.name, st, k, asc)
	}
	c.waitInSync("v", 60*time.Second)

	// 4. Kill the primary (the replica now): the session on the other
	// copy's node serves again after the failover, with no new login.
	newPrimary, standby := replica, primary
	s = standby.aluaSession(t, "v", 8)
	if st, _, asc, _ := doSense(s, tur, nil, 0); st == statusGood {
		t.Fatalf("%s's port serves while %s is the primary", standby.name, newPrimary.name)
	} else {
		t.Logf("%s before the kill: sense %04x", standby.name, asc)
	}
	killed := time.Now()
	newPrimary.kill()
	if err := untilServed(s, 30*time.Second, 2); err != nil {
		t.Fatalf("the session logged in at %s before %s was killed: %v\n%s", standby.name, newPrimary.name, err, c.logs())
	}
	t.Logf("the standby session at %s served a write %v after %s was killed, without logging in again",
		standby.name, time.Since(killed).Round(time.Millisecond), newPrimary.name)
}

// untilServed retries a WRITE then a READ of block b through s until both
// answer GOOD (unit attentions and transitioning or standby NOT READY are
// retried, as a multipath initiator retries them on a path it has), for
// at most d.
func untilServed(s *initiator.Session, d time.Duration, b uint64) error {
	deadline := time.Now().Add(d)
	data := make([]byte, 4096)
	copy(data, "alua"+strconv.FormatUint(b, 10))
	var last string
	for time.Now().Before(deadline) {
		st, k, asc, err := doSense(s, write16(b*8, 8), data, 0)
		if err != nil {
			return fmt.Errorf("the session ended: %v (last: %s)", err, last)
		}
		if st == statusGood {
			r, err := s.Do(read16(b*8, 8), nil, 4096)
			if err != nil || r.Status != statusGood || string(r.Data[:len("alua")]) != "alua" {
				return fmt.Errorf("reading back: %v %+v", err, r)
			}
			return nil
		}
		last = fmt.Sprintf("status %#x sense %#x/%04x", st, k, asc)
		if !(k == 6 || k == 2 && (asc == ascStandby || asc == 0x040a || asc == ascUnavailable)) {
			return fmt.Errorf("write refused: %s", last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not served within %v (last: %s)", d, last)
}
