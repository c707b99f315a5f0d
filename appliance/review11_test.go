package appliance

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/target/iscsi"
	"tandem.io/tandem/target/iscsi/initiator"
	"tandem.io/tandem/target/iscsi/login"
	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
)

// review11 helpers: a real initiator session to a node's own portal.

const review11Host = "iqn.2026-11.io.tandem.test:host"

func (c *memCluster) review11Session(node, vol string) *initiator.Session {
	c.t.Helper()
	s, err := initiator.Dial(context.Background(), initiator.Config{Addr: c.nodes[node].cfg.Portal, Target: c.node(node).iqn(vol),
		Name: review11Host, ISID: [6]byte{0x80, 0, 0, 0, 0, 1}, Timeout: 10 * time.Second})
	if err != nil {
		c.t.Fatalf("login to %s on %s: %v", vol, node, err)
	}
	c.t.Cleanup(func() { s.Close() })
	return s
}

// review11Do runs cdb, past pending unit attentions.
func review11Do(t *testing.T, s *initiator.Session, cdb, out []byte, readLen uint32) initiator.Response {
	t.Helper()
	for range 8 {
		r, err := s.Do(cdb, out, readLen)
		if err != nil {
			t.Fatalf("command %#x: %v", cdb[0], err)
		}
		if key, _ := r.SenseKey(); r.Status == 2 && key == 6 {
			continue
		}
		return r
	}
	t.Fatalf("command %#x: unit attentions without end", cdb[0])
	return initiator.Response{}
}

// prOut is a PERSISTENT RESERVE OUT with its 24-byte parameter list.
func prOut(action, typ byte, key, saKey uint64, allTgPt bool) (cdb, param []byte) {
	cdb = []byte{0x5f, action, typ, 0, 0, 0, 0, 0, 24, 0}
	param = make([]byte, 24)
	binary.BigEndian.PutUint64(param, key)
	binary.BigEndian.PutUint64(param[8:], saKey)
	if allTgPt {
		param[20] = 0x04
	}
	return cdb, param
}

// TestReview11ReservationsSurviveAMoveAcrossPorts: each node is now its
// own target port, so an I_T nexus through the primary is not one through
// the node that takes over. A host that holds a Write Exclusive –
// Registrants Only reservation (Windows and Linux clusters, fence_scsi)
// must still be able to write once the volume moved:
//
//  1. SPC-4 §5.15.2.4.4 says a standby port processes PERSISTENT RESERVE
//     OUT, so a multipath host registers through every path
//     (mpathpersist and MSDSM register on every path, ghost ones too):
//     here the standby port refuses it (NOT READY, standby);
//  2. a registration with ALL_TG_PT=1 covers every target port (and
//     REPORT CAPABILITIES says ATP_C): here it covers only the port it
//     came through.
//
// Before ALUA every node had the same portal group tag, so the nexus, and
// the registration, carried over to the new primary; now the host's
// writes through the new primary get RESERVATION CONFLICT.
func TestReview11ReservationsSurviveAMoveAcrossPorts(t *testing.T) {
	c := startMemCluster(t, 2)
	const vol = "prmove"
	v := c.createInSync(vol, 64<<20)
	p, s := v.Primary, other(v.Placement, v.Primary)
	c.waitFor("the standby port served", 30*time.Second, func() bool {
		sl := c.node(s).slot(vol)
		if !sl.tryLock() {
			return false
		}
		defer sl.unlock()
		return sl.role == roleStandby
	})
	onP, onS := c.review11Session(p, vol), c.review11Session(s, vol)
	const key = 0xabc
	tur := make([]byte, 6)
	c.waitFor("the standby port in state standby", 30*time.Second, func() bool {
		_, asc := review11Do(t, onS, tur, nil, 0).SenseKey()
		return asc == 0x040b
	})

	// 1. Register through the standby path.
	cdb, param := prOut(0, 0, 0, key, false)
	if r := review11Do(t, onS, cdb, param, 0); r.Status != 0 {
		k, asc := r.SenseKey()
		t.Errorf("PERSISTENT RESERVE OUT REGISTER through the standby port: status %#x key %#x asc %04x, want GOOD (SPC-4 5.15.2.4.4)", r.Status, k, asc)
	}
	// 2. Register (all target ports) and reserve through the primary.
	cdb, param = prOut(0, 0, 0, key, true)
	if r := review11Do(t, onP, cdb, param, 0); r.Status != 0 {
		t.Fatalf("REGISTER through the primary: status %#x", r.Status)
	}
	cdb, param = prOut(1, 5, key, 0, false) // RESERVE, Write Exclusive – Registrants Only
	if r := review11Do(t, onP, cdb, param, 0); r.Status != 0 {
		t.Fatalf("RESERVE through the primary: status %#x", r.Status)
	}

	if _, err := c.node(p).MoveVolume(context.Background(), vol, admin.MoveRequest{Primary: s}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := review11Do(t, onS, tur, nil, 0)
		if r.Status == 0 {
			break
		}
		if time.Now().After(deadline) {
			k, asc := r.SenseKey()
			t.Fatalf("the new primary's port never became active: key %#x asc %04x", k, asc)
		}
		time.Sleep(50 * time.Millisecond)
	}
	write := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}
	if r := review11Do(t, onS, write, make([]byte, 512), 0); r.Status != 0 {
		t.Errorf("WRITE by the registered host through the new primary: status %#x, want GOOD (0x18 is RESERVATION CONFLICT)", r.Status)
	}
}

// TestReview11FloatingRedirectNamesThePrimarysPortalGroup: a login that
// arrives at the floating address is redirected to the primary's portal.
// The TargetAddress must carry the portal group tag of that portal (RFC
// 7143 §13.8; the tag the primary answers with and SendTargets lists for
// it), not the tag of the node holding the floating address: before ALUA
// every node had the same tag, now each has its own. An initiator that
// keeps the tag from the redirect (open-iscsi does, in
// iscsi_update_address) expects another portal group than the one it
// reaches; SendTargets through the floating address lists the primary's
// portal with the same wrong tag.
func TestReview11FloatingRedirectNamesThePrimarysPortalGroup(t *testing.T) {
	c := startMemCluster(t, 2)
	const vol = "floatredir"
	v := c.createInSync(vol, 16<<20)
	p, h := v.Primary, other(v.Placement, v.Primary) // h holds the floating address
	st := c.node(h).cluster.State()
	wantTag := st.Nodes[p].Port
	if wantTag == 0 || st.Nodes[h].Port == wantTag {
		t.Fatalf("ports %d and %d", wantTag, st.Nodes[h].Port)
	}

	// Node h as it would be with a floating address: its own iSCSI server
	// (its port), the volume's target with h's redirect, listening at the
	// floating address.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	floating := netip.MustParseAddr("127.0.0.1")
	fresh := &Node{cfg: c.nodes[h].cfg, cluster: c.node(h).cluster, floatingIP: floating}
	srv, err := iscsi.NewServer(iscsi.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv.SetTargetPort(iscsi.TargetPort{PortalGroupTag: st.Nodes[h].Port, RelativePortID: st.Nodes[h].Port, PortGroup: st.Nodes[h].Port})
	dev := &portDevice{}
	dev.size.Store(v.Size)
	lu, err := scsi.NewLogicalUnit(scsi.LUConfig{Device: dev, NAA: v.NAA, Serial: v.Serial})
	if err != nil {
		t.Fatal(err)
	}
	tg, err := scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LogicalUnit{0: lu}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddTarget(fresh.targetConfig(v, tg)); err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})

	rl := review11Login(t, ln.Addr().String(), "InitiatorName="+review11Host, "SessionType=Normal", "TargetName="+fresh.iqn(vol))
	resp, pairs := rl.resp, rl.pairs
	var addr string
	for _, kv := range pairs {
		if kv.Key == "TargetAddress" {
			addr = kv.Value
		}
	}
	want := fmt.Sprintf("%s,%d", st.Nodes[p].Portal, wantTag)
	if resp.StatusClass != 1 || addr != want {
		t.Errorf("login at the floating address: status class %d, TargetAddress %q; want a redirect to %q (the primary's portal group)", resp.StatusClass, addr, want)
	}
}

// review11Raw is a raw login's connection and answer.
type review11Raw struct {
	nc     net.Conn
	r      pdu.Reader
	w      pdu.Writer
	resp   pdu.LoginResponse
	pairs  []login.Pair
	statSN uint32
}

// review11Login logs in at addr with keys in one step (operational
// stage, no security) and returns the answer.
func review11Login(t *testing.T, addr string, keys ...string) *review11Raw {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	rl := &review11Raw{nc: nc, r: pdu.Reader{R: bufio.NewReader(nc), MaxDataSegmentLength: 65536}, w: pdu.Writer{Dst: nc}}
	text := []byte(strings.Join(keys, "\x00") + "\x00")
	req := pdu.LoginRequest{Transit: true, CSG: 1, NSG: 3, ISID: [6]byte{0x80, 0, 0, 0, 0, 2}, ITT: 1, CmdSN: 1}
	h, data := rl.exchange(t, &req, text)
	if err := rl.resp.Unmarshal(&h); err != nil {
		t.Fatal(err)
	}
	rl.statSN = rl.resp.StatSN + 1
	rl.pairs, _ = login.ParseText(data)
	return rl
}

func (rl *review11Raw) exchange(t *testing.T, m interface{ Marshal(*pdu.Header) }, data []byte) (pdu.Header, []byte) {
	t.Helper()
	var h pdu.Header
	m.Marshal(&h)
	if err := rl.w.WritePDU(&h, data); err != nil {
		t.Fatal(err)
	}
	if err := rl.w.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := rl.r.ReadHeader(&h); err != nil {
		t.Fatal(err)
	}
	in := make([]byte, h.DataSegmentLength())
	if err := rl.r.ReadData(&h, in); err != nil {
		t.Fatal(err)
	}
	return h, in
}

// TestReview11SendTargetsWithAWildcardPortal: README says to run
// `tandem serve --portal 0.0.0.0:3260` to listen on every address, then
// discover at the node's address. SendTargets used to answer with the
// address the initiator reached; it now lists the catalog's portals, so
// with a wildcard portal it answers 0.0.0.0:3260, which no initiator can
// log in to (iscsiadm records the target at 0.0.0.0 and `-p ADDR
// --login` finds no record).
func TestReview11SendTargetsWithAWildcardPortal(t *testing.T) {
	c := &memCluster{t: t, nodes: map[string]*memNode{}}
	probe := freeAddr(t)
	_, port, _ := net.SplitHostPort(probe)
	ln, err := net.Listen("tcp", "0.0.0.0:"+port)
	if err != nil {
		t.Skipf("port %s not free on every address: %v", port, err)
	}
	ln.Close()
	cfg := Config{DataDir: t.TempDir(), Portal: "0.0.0.0:" + port, API: freeAddr(t), Cluster: freeAddr(t), Link: freeAddr(t),
		Name: "n1", IQNPrefix: "iqn.2026-11.io.tandem", AllowUnsafeFilesystem: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.order = append(c.order, "n1")
	c.start(cfg)
	c.createServed("wild", 16<<20)
	c.waitFor("a target port", 30*time.Second, func() bool { return c.node("n1").port.Load() != 0 })

	reached := "127.0.0.1:" + port
	rl := review11Login(t, reached, "InitiatorName="+review11Host, "SessionType=Discovery")
	if rl.resp.StatusClass != 0 {
		t.Fatalf("discovery login: status class %d", rl.resp.StatusClass)
	}
	h, data := rl.exchange(t, &pdu.TextRequest{Final: true, ITT: 2, TTT: 0xffffffff, CmdSN: 1, ExpStatSN: rl.statSN},
		[]byte("SendTargets=All\x00"))
	_ = h
	pairs, _ := login.ParseText(data)
	var addrs []string
	for _, p := range pairs {
		if p.Key == "TargetAddress" {
			addrs = append(addrs, p.Value)
		}
	}
	if len(addrs) == 0 {
		t.Fatalf("SendTargets: no TargetAddress in %v", pairs)
	}
	for _, a := range addrs {
		host, _, _ := net.SplitHostPort(strings.Split(a, ",")[0])
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			t.Errorf("SendTargets at %s gives TargetAddress %q: not an address an initiator can log in to (want %s,<tag>)", reached, a, reached)
		}
	}
}

// TestReview11PerLoginCatalogLookupsDoNotCopyTheCatalog: the closures the
// iSCSI server calls for every login and for every target of a
// SendTargets (RedirectFor, Portals) read one volume and a few nodes, but
// each takes State(), a deep copy of the whole catalog: with V volumes a
// SendTargets=All copies the catalog 2V times (BenchmarkState: 5 ms and
// 0.9 MB per copy at 1000 volumes, so seconds of CPU and a gigabyte of
// garbage for one discovery), and every reconciler pass copies it once
// per volume this node is the primary of (servePrimary's port states).
func TestReview11PerLoginCatalogLookupsDoNotCopyTheCatalog(t *testing.T) {
	c := startMemCluster(t, 3)
	ctx := context.Background()
	c.nodes["n3"].stop()
	const volumes = 300
	for i := range volumes {
		name := fmt.Sprintf("bulk%03d", i)
		if _, err := c.leader().cluster.Propose(ctx, cluster.CreateVolume{Name: name, ID: "id-" + name,
			NAA: [16]byte{0x60, 0xee, byte(i >> 8), byte(i), 15: 1}, Serial: name, Size: 1 << 20, Created: time.Now(),
			Copies: 1, Placement: []string{"n3"}}); err != nil {
			t.Fatal(err)
		}
	}
	c.nodes["n1"].stop()
	c.nodes["n2"].stop()
	n1 := c.node("n1")
	if got := len(n1.cluster.State().Volumes); got < volumes {
		t.Fatalf("%d volumes in n1's catalog", got)
	}
	fresh := &Node{cfg: c.nodes["n1"].cfg, cluster: n1.cluster, floatingIP: netip.MustParseAddr("127.0.0.1")}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3260}
	portals, redirect := fresh.portalsOf("bulk007"), fresh.redirectFor("bulk007")
	allocs := testing.AllocsPerRun(20, func() {
		_ = redirect(local)
		_ = portals(local)
	})
	if allocs > 200 {
		t.Errorf("one target's SendTargets entry costs %.0f allocations with %d volumes in the catalog: the lookups copy the whole catalog", allocs, volumes)
	}
}
