package iscsi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/login"
	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
)

func read10(lba uint32, blocks uint16) []byte {
	cdb := make([]byte, 10)
	cdb[0] = 0x28
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], blocks)
	return cdb
}

func write10(lba uint32, blocks uint16) []byte {
	cdb := read10(lba, blocks)
	cdb[0] = 0x2a
	return cdb
}

func status(t *testing.T, h pdu.Header) (uint8, uint32, bool, bool) {
	t.Helper()
	switch h.Opcode() {
	case pdu.OpDataIn:
		var d pdu.DataIn
		d.Unmarshal(&h)
		return d.Status, d.Residual, d.Overflow, d.Underflow
	case pdu.OpSCSIResponse:
		var r pdu.SCSIResponse
		r.Unmarshal(&h)
		return r.Status, r.Residual, r.Overflow, r.Underflow
	}
	t.Fatalf("no status in %v", h.Opcode())
	return 0, 0, false, false
}

func TestReadWrite(t *testing.T) {
	tests := []struct {
		name      string
		keys      []string
		size      int
		immediate int
	}{
		{"1 one block immediate", nil, 512, 512},
		{"2 r2t only", []string{"ImmediateData=No"}, 64 << 10, 0},
		{"3 immediate then r2t", nil, 1 << 20, 8192},
		{"4 digests", []string{"HeaderDigest=CRC32C", "DataDigest=CRC32C"}, 300 << 10, 4096},
		{"5 small bursts", []string{"MaxBurstLength=4096", "FirstBurstLength=512", "MaxRecvDataSegmentLength=512"}, 40 << 10, 512},
		{"6 odd data segment length (padded Data-In)", []string{"MaxRecvDataSegmentLength=8191", "MaxBurstLength=65533"}, 256 << 10, 0},
	}
	ts := startServer(t, Auth{}, Config{})
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := dial(t, ts.addr)
			defer in.close()
			in.isid[5] = byte(i)
			in.mustLogin(tc.keys...)
			data := make([]byte, tc.size)
			rand.Read(data)
			lba := uint32(i * 4096)
			h, _, err := in.command(write10(lba, uint16(tc.size/512)), uint32(tc.size), false, data, tc.immediate)
			if err != nil {
				t.Fatal(err)
			}
			if st, _, _, _ := status(t, h); st != 0 {
				t.Fatalf("write status %d", st)
			}
			h, got, err := in.command(read10(lba, uint16(tc.size/512)), uint32(tc.size), true, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			if st, _, _, _ := status(t, h); st != 0 {
				t.Fatalf("read status %d", st)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes differ", len(got))
			}
			if !bytes.Equal(ts.dev.data[int(lba)*512:int(lba)*512+tc.size], data) {
				t.Fatal("device content differs")
			}
		})
	}
}

func TestResiduals(t *testing.T) {
	ts := startServer(t, Auth{}, Config{})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	tests := []struct {
		name       string
		cdb        []byte
		edtl       uint32
		read       bool
		out        []byte
		wantResid  uint32
		over, unde bool
		wantData   int
	}{
		{"1 read edtl 0", read10(0, 1), 0, true, nil, 512, true, false, 0},
		{"2 read edtl 10000", read10(0, 1), 10000, true, nil, 10000 - 512, false, true, 512},
		{"3 read edtl 200", read10(0, 1), 200, true, nil, 312, true, false, 200},
		{"4 write edtl 1 block for 2", write10(0, 2), 512, false, make([]byte, 512), 512, true, false, 0},
		{"5 write edtl 2 blocks for 1", write10(0, 1), 1024, false, make([]byte, 1024), 512, false, true, 0},
	}
	for _, tc := range tests {
		h, data, err := in.command(tc.cdb, tc.edtl, tc.read, tc.out, len(tc.out))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		st, resid, over, under := status(t, h)
		if st != 0 || resid != tc.wantResid || over != tc.over || under != tc.unde || len(data) != tc.wantData {
			t.Errorf("%s: status %d residual %d over %v under %v data %d", tc.name, st, resid, over, under, len(data))
		}
	}
}

func TestCmdSNOutsideWindowIgnored(t *testing.T) {
	ts := startServer(t, Auth{}, Config{})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	in.cmdSN += 1000
	cmd := pdu.SCSICommand{Final: true, ITT: 99, CmdSN: in.cmdSN}
	if err := in.send(&cmd, nil); err != nil {
		t.Fatal(err)
	}
	in.cmdSN -= 1000
	h, _, err := in.command(make([]byte, 6), 0, false, nil, 0) // TEST UNIT READY
	if err != nil {
		t.Fatal(err)
	}
	var r pdu.SCSIResponse
	if err := r.Unmarshal(&h); err != nil || r.ITT == 99 {
		t.Fatalf("the out-of-window command was answered: %+v %v", r, err)
	}
}

func TestMalformedPDUsRejectedNodeSurvives(t *testing.T) {
	ts := startServer(t, Auth{}, Config{})
	cases := []struct {
		name string
		raw  func() []byte
	}{
		{"1 unknown opcode", func() []byte { var h pdu.Header; h[0] = 0x1e; h[1] = 0x80; return h[:] }},
		{"2 snack at ERL0", func() []byte { var h pdu.Header; (&pdu.SNACKRequest{ITT: 5}).Marshal(&h); return h[:] }},
		{"3 oversized data segment", func() []byte {
			var h pdu.Header
			(&pdu.NOPOut{ITT: 5, Immediate: true}).Marshal(&h)
			h.SetDataSegmentLength(1 << 23)
			return h[:]
		}},
		{"4 data-out with unknown TTT", func() []byte {
			var h pdu.Header
			(&pdu.DataOut{ITT: 77, TTT: 12345}).Marshal(&h)
			return h[:]
		}},
		{"5 random bytes", func() []byte { b := make([]byte, 48); rand.Read(b); return b }},
	}
	for _, tc := range cases {
		in := dial(t, ts.addr)
		in.mustLogin()
		in.nc.Write(tc.raw())
		// Either a Reject or a closed connection; never a hang or a crash.
		in.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		h, _, err := in.recv()
		if err == nil && h.Opcode() != pdu.OpReject {
			t.Errorf("%s: got %v, want Reject or close", tc.name, h.Opcode())
		}
		in.close()
	}
	// The node still serves.
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	if _, _, err := in.command(make([]byte, 6), 0, false, nil, 0); err != nil {
		t.Fatal(err)
	}
}

func TestKilledConnectionsLeakNoGoroutines(t *testing.T) {
	ts := startServer(t, Auth{}, Config{})
	// Warm up once so lazily started runtime goroutines are counted.
	in := dial(t, ts.addr)
	in.mustLogin()
	in.close()
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		in := dial(t, ts.addr)
		in.isid[5] = byte(i)
		in.mustLogin("ImmediateData=Yes", "InitialR2T=Yes")
		// A 1 MiB write with only the immediate part sent, then the socket dies.
		cmd := pdu.SCSICommand{Final: true, Write: true, ITT: 1, ExpectedDataTransferLength: 1 << 20, CmdSN: in.cmdSN}
		copy(cmd.CDB[:], write10(0, 2048))
		in.send(&cmd, make([]byte, 4096))
		if i%2 == 0 {
			in.recv() // the first R2T
		}
		in.close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
	if s := ts.srv.Sessions(""); len(s) != 0 {
		t.Fatalf("sessions left: %+v", s)
	}
	if used := ts.srv.buffers.used; used != 0 {
		t.Fatalf("buffer budget leaked: %d bytes", used)
	}
}

func TestNOPInKeepAlive(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: 100 * time.Millisecond, NOPTimeout: 300 * time.Millisecond})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	h, _, err := in.recv()
	if err != nil || h.Opcode() != pdu.OpNOPIn {
		t.Fatalf("want a NOP-In ping, got %v %v", h.Opcode(), err)
	}
	// Not answering: the target drops the connection.
	in.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		h, _, err = in.recv()
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection not dropped after an unanswered NOP-In")
			}
			return
		}
	}
}

func TestSessionReinstatement(t *testing.T) {
	ts := startServer(t, Auth{}, Config{})
	a := dial(t, ts.addr)
	defer a.close()
	a.mustLogin()
	b := dial(t, ts.addr)
	defer b.close()
	b.mustLogin() // same initiator name and ISID: replaces a's session
	a.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, _, err := a.recv(); err == nil {
		t.Fatal("old connection still open after reinstatement")
	}
	if n := len(ts.srv.Sessions(testIQN)); n != 1 {
		t.Fatalf("%d sessions", n)
	}
}

func TestShutdownAsksInitiatorsToLogOut(t *testing.T) {
	ts := startServer(t, Auth{}, Config{})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	got := make(chan pdu.Header, 1)
	go func() {
		h, _, _ := in.recv()
		got <- h
		// Log out as asked.
		in.send(&pdu.LogoutRequest{Immediate: true, ITT: 50, CmdSN: in.cmdSN}, nil)
		in.recv()
	}()
	go ts.srv.Shutdown(t.Context())
	select {
	case h := <-got:
		var m pdu.AsyncMessage
		if err := m.Unmarshal(&h); err != nil || m.Event != pdu.AsyncLogoutRequest {
			t.Fatalf("got %v, want a logout request", h.Opcode())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no async logout request")
	}
}

// FuzzFullFeaturePDUs logs in and sends arbitrary bytes as PDUs: the server
// must neither panic nor stop serving.
func FuzzFullFeaturePDUs(f *testing.F) {
	var h pdu.Header
	(&pdu.SCSICommand{Final: true, Read: true, ITT: 1, CmdSN: 1, ExpectedDataTransferLength: 512, CDB: [16]byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1}}).Marshal(&h)
	f.Add(append([]byte(nil), h[:]...))
	(&pdu.TaskMgmtRequest{Function: 5, ITT: 2, CmdSN: 1}).Marshal(&h)
	f.Add(append([]byte(nil), h[:]...))
	(&pdu.TextRequest{Final: true, ITT: 3, TTT: 0xffffffff, CmdSN: 1}).Marshal(&h)
	h.SetDataSegmentLength(16)
	f.Add(append(append([]byte(nil), h[:]...), []byte("SendTargets=All\x00")...))
	ts := startServer(f, Auth{}, Config{NOPInterval: -1})
	f.Fuzz(func(t *testing.T, raw []byte) {
		in := dial(t, ts.addr)
		defer in.close()
		in.mustLogin()
		in.nc.Write(raw)
		// End of input: the target sees EOF, answers what it can and
		// closes; a target that hangs instead fails the deadline.
		in.nc.(*net.TCPConn).CloseWrite()
		in.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, _, err := in.recv(); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("target neither answered nor closed within 5s of EOF on input %x", raw)
				}
				break
			}
		}
	})
}

// TARGET COLD RESET: the requester gets its response, then every session of
// the target is closed, the requester's included, and nothing deadlocks:
// the server still shuts down promptly.
func TestTargetColdReset(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	a, b := dial(t, ts.addr), dial(t, ts.addr)
	a.mustLogin()
	b.isid[5] = 2
	b.mustLogin()
	if err := a.send(&pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFTargetColdReset, ITT: 99, CmdSN: a.cmdSN, RefCmdSN: a.cmdSN}, nil); err != nil {
		t.Fatal(err)
	}
	h, _, err := a.recv()
	if err != nil || h.Opcode() != pdu.OpTaskMgmtResp {
		t.Fatalf("no task management response: %v %v", h.Opcode(), err)
	}
	for _, in := range []*initiator{a, b} {
		for {
			if _, _, err := in.recv(); err != nil {
				break // closed, as a cold reset must
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown after a cold reset: %v", err)
	}
}

func TestNewServerValidatesBudgets(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"1 defaults", Config{}, false},
		{"2 initiator share defaults to an eighth", Config{BufferBudget: 512 * mib}, false},
		{"3 initiator share below the largest command", Config{InitiatorBufferBudget: mib}, true},
		{"4 initiator share above the budget", Config{BufferBudget: 64 * mib, InitiatorBufferBudget: 128 * mib}, true},
		{"5 budget below the largest command", Config{BufferBudget: 16 * mib}, true},
		{"6 small budget, small commands", Config{BufferBudget: 16 * mib, MaxTransferLength: mib}, false},
	}
	for _, tc := range tests {
		s, err := NewServer(tc.cfg)
		if (err != nil) != tc.wantErr {
			t.Errorf("%s: err %v, want error %v", tc.name, err, tc.wantErr)
		}
		if err == nil {
			if b := &s.buffers; b.perInitiator < int64(s.cfg.MaxTransferLength) || b.perInitiator > b.max {
				t.Errorf("%s: initiator share %d outside %d..%d", tc.name, b.perInitiator, s.cfg.MaxTransferLength, b.max)
			}
			s.Shutdown(context.Background())
		}
	}
}

// TestClusterTargetPort: a cluster node's target port (SetTargetPort) in
// the login answer and SCSI's port groups; SendTargets giving every
// node's portal; redirection only of logins that arrive at the floating
// address (RedirectAt).
func TestClusterTargetPort(t *testing.T) {
	ts := startServer(t, Auth{}, Config{})
	ts.srv.SetTargetPort(TargetPort{PortalGroupTag: 7, RelativePortID: 7, PortGroup: 7})
	lu, _ := scsi.NewLogicalUnit(scsi.LUConfig{Device: &memDevice{data: make([]byte, 1<<20)}, NAA: [16]byte{0x60, 9}})
	st, _ := scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LogicalUnit{0: lu}})
	const moved = "iqn.2026-11.io.tandem:moved"
	floating := func(a net.Addr) string {
		if a.(*net.TCPAddr).IP.Equal(net.IPv4(127, 0, 0, 2)) {
			return "10.0.0.9:3260"
		}
		return ""
	}
	if err := ts.srv.AddTarget(TargetConfig{Name: moved, SCSI: st, RedirectFor: floating,
		Portals: func(net.Addr) []string { return []string{"10.0.0.8:3260,7", "10.0.0.9:3260,3"} }}); err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.AddTarget(TargetConfig{Name: "iqn.x:bad", RedirectFor: floating}); err == nil {
		t.Fatal("a target redirected only at some addresses was accepted without SCSI")
	}
	_, port, _ := net.SplitHostPort(ts.addr)
	ln2, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 here: %v", err)
	}
	go ts.srv.Serve(ln2)
	pair := func(pairs []login.Pair, key string) []string {
		var vs []string
		for _, p := range pairs {
			if p.Key == key {
				vs = append(vs, p.Value)
			}
		}
		return vs
	}

	// 1. At the node's own address: served, with the node's port.
	in := dial(t, "127.0.0.1:"+port)
	resp, pairs, err := in.login(moved)
	if err != nil || resp.StatusClass != 0 {
		t.Fatalf("login at the node's address: %v class %d", err, resp.StatusClass)
	}
	if got := pair(pairs, "TargetPortalGroupTag"); !slices.Equal(got, []string{"7"}) {
		t.Errorf("TargetPortalGroupTag %v, want 7", got)
	}
	var rtpg []byte
	for range 3 { // past the power-on unit attention
		var h pdu.Header
		h, rtpg, err = in.command([]byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, 256, true, nil, 0)
		if st, _, _, _ := status(t, h); err == nil && st == 0 {
			break
		}
	}
	if len(rtpg) < 16 || binary.BigEndian.Uint16(rtpg[6:]) != 7 || binary.BigEndian.Uint16(rtpg[14:]) != 7 {
		t.Errorf("REPORT TARGET PORT GROUPS % x, want group 7 with relative port 7", rtpg)
	}
	in.close()

	// 2. At the floating address: redirected to the primary.
	in = dial(t, ln2.Addr().String())
	resp, pairs, err = in.login(moved)
	if err != nil || resp.StatusClass != 1 || !slices.Equal(pair(pairs, "TargetAddress"), []string{"10.0.0.9:3260,7"}) {
		t.Errorf("login at the floating address: %v class %d %v, want a redirect to 10.0.0.9:3260,7", err, resp.StatusClass, pairs)
	}
	in.close()

	// 3. SendTargets: every node's portal at the node's address, the
	// primary's at the floating address; a plain target keeps the portal
	// reached.
	for _, tc := range []struct {
		addr  string
		moved []string
	}{
		{"127.0.0.1:" + port, []string{"10.0.0.8:3260,7", "10.0.0.9:3260,3"}},
		{ln2.Addr().String(), []string{"10.0.0.9:3260,7"}},
	} {
		in := dial(t, tc.addr)
		if resp, _, err := in.login(""); err != nil || resp.StatusClass != 0 {
			t.Fatalf("discovery login at %s: %v", tc.addr, err)
		}
		text := []byte("SendTargets=All\x00")
		if err := in.send(&pdu.TextRequest{Final: true, ITT: 9, TTT: 0xffffffff, CmdSN: in.cmdSN, ExpStatSN: in.statSN}, text); err != nil {
			t.Fatal(err)
		}
		_, data, err := in.recv()
		if err != nil {
			t.Fatal(err)
		}
		got, _ := login.ParseText(data)
		addrs := map[string][]string{}
		var cur string
		for _, p := range got {
			switch p.Key {
			case "TargetName":
				cur = p.Value
			case "TargetAddress":
				addrs[cur] = append(addrs[cur], p.Value)
			}
		}
		if !slices.Equal(addrs[moved], tc.moved) || !slices.Equal(addrs[testIQN], []string{tc.addr + ",7"}) {
			t.Errorf("SendTargets at %s: %v, want %s at %v and the plain target at %s,7", tc.addr, addrs, moved, tc.moved, tc.addr)
		}
		in.close()
	}
}
