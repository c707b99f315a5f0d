package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/pdu"
)

// Tests of initiators that do not play by the rules: ignoring MaxCmdSN,
// flooding immediate commands, hogging the buffer budget, not reading.

// queue writes a PDU without flushing.
func (in *initiator) queue(m interface{ Marshal(*pdu.Header) }, data []byte) {
	in.t.Helper()
	var h pdu.Header
	m.Marshal(&h)
	if err := in.w.WritePDU(&h, data); err != nil {
		in.t.Fatal(err)
	}
}

// writeNoData queues a 4 KiB WRITE whose data the target must ask for with
// R2T: until it is sent the command holds its slot.
func (in *initiator) writeNoData(itt, cmdSN uint32, immediate bool) {
	cmd := pdu.SCSICommand{Immediate: immediate, Final: true, Write: true, ITT: itt, ExpectedDataTransferLength: 4096,
		CmdSN: cmdSN, ExpStatSN: in.statSN}
	copy(cmd.CDB[:], write10(0, 8))
	in.queue(&cmd, nil)
}

// expectPDUs reads PDUs until the connection has been quiet for quiet, and
// returns them by opcode; a NOP-In is skipped. It also checks that no PDU
// advertises a MaxCmdSN below ExpCmdSN-1 (RFC 7143 §4.2.2.1).
func (in *initiator) expectPDUs(quiet time.Duration) map[pdu.Opcode][]pdu.Header {
	in.t.Helper()
	got := map[pdu.Opcode][]pdu.Header{}
	for {
		in.nc.SetReadDeadline(time.Now().Add(quiet))
		h, _, err := in.recv()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			in.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
			return got
		}
		if err != nil {
			in.t.Fatal(err)
		}
		exp, max := binary.BigEndian.Uint32(h[28:]), binary.BigEndian.Uint32(h[32:])
		if serialLess(max, exp-1) {
			in.t.Errorf("%v advertises MaxCmdSN %d below ExpCmdSN-1 (%d)", h.Opcode(), max, exp-1)
		}
		got[h.Opcode()] = append(got[h.Opcode()], h)
	}
}

func itt(h pdu.Header) uint32 { return binary.BigEndian.Uint32(h[16:]) }

// An immediate SCSI command beyond the allowance is rejected with reason
// 0x06 (RFC 7143 §11.17.1), carrying its header, and never started; once
// an immediate command has ended, the next is accepted again.
func TestImmediateCommandsBeyondTheAllowanceRejected(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	const extra = 3
	for i := range ImmediateCommands + extra {
		in.writeNoData(100+uint32(i), in.cmdSN, true)
	}
	if err := in.w.Flush(); err != nil {
		t.Fatal(err)
	}
	got := in.expectPDUs(300 * time.Millisecond)
	if n := len(got[pdu.OpR2T]); n != ImmediateCommands {
		t.Errorf("%d immediate WRITEs got an R2T, want %d (the allowance)", n, ImmediateCommands)
	}
	if n := len(got[pdu.OpReject]); n != extra {
		t.Fatalf("%d Rejects, want %d", n, extra)
	}
	// The Reject's reason and the rejected header; read again to see
	// the data segment.
	in.writeNoData(200, in.cmdSN, true)
	if err := in.w.Flush(); err != nil {
		t.Fatal(err)
	}
	h, data, err := in.recv()
	if err != nil || h.Opcode() != pdu.OpReject {
		t.Fatalf("got %v %v, want a Reject", h.Opcode(), err)
	}
	var r pdu.Reject
	r.Unmarshal(&h)
	if r.Reason != pdu.RejectImmediateRejected || len(data) < pdu.BHSLen || binary.BigEndian.Uint32(data[16:]) != 200 {
		t.Fatalf("Reject reason %#x, data % x; want 0x06 with the header of ITT 200", r.Reason, data)
	}
	// Finish one immediate WRITE: its slot is free again.
	r2t := got[pdu.OpR2T][0]
	var m pdu.R2T
	m.Unmarshal(&r2t)
	if err := in.send(&pdu.DataOut{Final: true, ITT: m.ITT, TTT: m.TTT}, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if got := in.expectPDUs(300 * time.Millisecond); len(got[pdu.OpSCSIResponse]) != 1 {
		t.Fatalf("no status for the completed WRITE: %v", got)
	}
	in.writeNoData(300, in.cmdSN, true)
	if err := in.w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := in.expectPDUs(300 * time.Millisecond); len(got[pdu.OpR2T]) != 1 || itt(got[pdu.OpR2T][0]) != 300 {
		t.Fatalf("immediate WRITE after one ended: %v, want an R2T", got)
	}
}

// An initiator that ignores MaxCmdSN is ignored in turn: with the window
// full, a command with CmdSN == ExpCmdSN is not accepted (RFC 7143
// §4.2.2.1), and MaxCmdSN never falls below ExpCmdSN-1. Once a slot is
// free the same CmdSN is accepted.
func TestCommandsBeyondTheWindowIgnored(t *testing.T) {
	const depth = 4
	ts := startServer(t, Auth{}, Config{NOPInterval: -1, QueueDepth: depth})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	for i := range depth + 3 {
		in.writeNoData(100+uint32(i), in.cmdSN, false)
		if i < depth {
			in.cmdSN++
		}
	}
	if err := in.w.Flush(); err != nil {
		t.Fatal(err)
	}
	got := in.expectPDUs(300 * time.Millisecond)
	if n := len(got[pdu.OpR2T]); n != depth {
		t.Fatalf("%d WRITEs accepted (R2T), want the window's %d", n, depth)
	}
	last := got[pdu.OpR2T][depth-1]
	if exp, max := binary.BigEndian.Uint32(last[28:]), binary.BigEndian.Uint32(last[32:]); max != exp-1 {
		t.Errorf("with the window full ExpCmdSN %d MaxCmdSN %d, want the window closed (MaxCmdSN = ExpCmdSN-1)", exp, max)
	}
	// Finish the first WRITE: its status opens the window by one.
	var m pdu.R2T
	m.Unmarshal(&got[pdu.OpR2T][0])
	if err := in.send(&pdu.DataOut{Final: true, ITT: m.ITT, TTT: m.TTT}, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	got = in.expectPDUs(300 * time.Millisecond)
	resp := got[pdu.OpSCSIResponse]
	if len(resp) != 1 || itt(resp[0]) != m.ITT {
		t.Fatalf("got %v, want the status of ITT %d only", got, m.ITT)
	}
	if exp, max := binary.BigEndian.Uint32(resp[0][28:]), binary.BigEndian.Uint32(resp[0][32:]); max != exp {
		t.Errorf("status: ExpCmdSN %d MaxCmdSN %d, want one free slot", exp, max)
	}
	in.writeNoData(200, in.cmdSN, false)
	if err := in.w.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := in.expectPDUs(300 * time.Millisecond); len(got[pdu.OpR2T]) != 1 || itt(got[pdu.OpR2T][0]) != 200 {
		t.Fatalf("a command in the reopened window: %v, want its R2T", got)
	}
}

// One initiator cannot take the whole buffer budget: beyond its share its
// commands get TASK SET FULL, and another initiator's command still runs.
// (Its sessions share the one share: TestOneInitiatorsSessionsShareOneBudget)
func TestOneInitiatorCannotTakeTheWholeBufferBudget(t *testing.T) {
	const mib = 1 << 20
	ts := startServer(t, Auth{}, Config{NOPInterval: -1, MaxTransferLength: mib, BufferBudget: 8 * mib, InitiatorBufferBudget: 2 * mib})
	hog, other := dial(t, ts.addr), dial(t, ts.addr)
	defer hog.close()
	defer other.close()
	hog.mustLogin()
	other.name = "iqn.2026-11.io.tandem:another-host"
	other.mustLogin()
	// The hog's 1 MiB WRITEs wait for data it never sends.
	for i := range 8 {
		cmd := pdu.SCSICommand{Final: true, Write: true, ITT: 100 + uint32(i), ExpectedDataTransferLength: mib,
			CmdSN: hog.cmdSN, ExpStatSN: hog.statSN}
		copy(cmd.CDB[:], write10(0, mib/512))
		hog.cmdSN++
		hog.queue(&cmd, nil)
	}
	if err := hog.w.Flush(); err != nil {
		t.Fatal(err)
	}
	got := hog.expectPDUs(300 * time.Millisecond)
	full := 0
	for _, h := range got[pdu.OpSCSIResponse] {
		if s, _, _, _ := status(t, h); s == 0x28 {
			full++
		}
	}
	t.Logf("hog: %d WRITEs holding buffers, %d TASK SET FULL", len(got[pdu.OpR2T]), full)
	if len(got[pdu.OpR2T]) != 2 || full != 6 {
		t.Errorf("hog: %d WRITEs accepted, %d TASK SET FULL; want 2 (its 2 MiB share) and 6", len(got[pdu.OpR2T]), full)
	}
	h, _, err := other.command(write10(0, mib/512), mib, false, make([]byte, mib), 0)
	if err != nil {
		t.Fatal(err)
	}
	if s, _, _, _ := status(t, h); s != 0 {
		t.Fatalf("the other initiator's 1 MiB WRITE: status %#x, want GOOD", s)
	}
}

// readFlood makes the target send n MiB of Data-In the initiator does not
// read, so that the target's writer blocks.
func (in *initiator) readFlood(n int) {
	for range n {
		cmd := pdu.SCSICommand{Final: true, Read: true, ITT: in.itt, ExpectedDataTransferLength: 1 << 20,
			CmdSN: in.cmdSN, ExpStatSN: in.statSN}
		copy(cmd.CDB[:], read10(0, 2048))
		in.itt++
		in.cmdSN++
		in.queue(&cmd, nil)
	}
	if err := in.w.Flush(); err != nil {
		in.t.Fatal(err)
	}
}

// An initiator that stops reading its responses is dropped once a write to
// it has blocked for NOPTimeout, and everything its commands held is freed.
func TestInitiatorThatStopsReadingIsDropped(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1, NOPTimeout: 500 * time.Millisecond})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	in.readFlood(64)
	deadline := time.Now().Add(10 * time.Second)
	for len(ts.srv.Sessions("")) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := ts.srv.Sessions(""); len(s) > 0 {
		t.Fatalf("the session of an initiator that stopped reading is still there after 10s: %+v", s)
	}
	ts.srv.buffers.mu.Lock()
	used := ts.srv.buffers.used
	ts.srv.buffers.mu.Unlock()
	if used != 0 {
		t.Fatalf("%d bytes of buffers still held", used)
	}
}

// fillSendQueue makes in's connection stop being read by the target: it
// has the target send Data-In it does not read, then pings until the
// target stops taking them (its send queue is full).
func (in *initiator) fillSendQueue() {
	in.t.Helper()
	in.readFlood(64)
	var h pdu.Header
	for i := uint32(0); ; i++ {
		(&pdu.NOPOut{Immediate: true, ITT: 1000 + i, TTT: 0xffffffff, CmdSN: in.cmdSN}).Marshal(&h)
		in.nc.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		err := in.w.WritePDU(&h, nil)
		if err == nil {
			err = in.w.Flush()
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			in.nc.SetWriteDeadline(time.Time{})
			return
		}
		if err != nil {
			in.t.Fatal(err)
		}
		if i > 1<<20 {
			in.t.Fatal("the target keeps reading")
		}
	}
}

// Shutdown does not wait for room in the send queue of a connection that
// is not read: it returns when its context ends, and the other sessions
// still get their logout request.
func TestShutdownWithAFullSendQueue(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1, NOPTimeout: time.Minute})
	stuck, good := dial(t, ts.addr), dial(t, ts.addr)
	defer stuck.close()
	defer good.close()
	stuck.mustLogin()
	good.isid[5] = 2
	good.mustLogin()
	stuck.fillSendQueue()
	asked := make(chan bool, 1)
	go func() {
		h, _, err := good.recv()
		var m pdu.AsyncMessage
		asked <- err == nil && m.Unmarshal(&h) == nil && m.Event == pdu.AsyncLogoutRequest
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- ts.srv.Shutdown(ctx) }()
	select {
	case err := <-done:
		t.Logf("Shutdown returned after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown with a 1s context still blocked after 10s")
	}
	if !<-asked {
		t.Error("the other session got no logout request")
	}
}

// A flood of everything an initiator can send without reading a single
// response — immediate and non-immediate commands in and out of the
// window, task management requests, pings with data — leaves the server
// with a bounded number of goroutines and tasks.
func TestFloodWithoutReadingIsBounded(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1, NOPTimeout: time.Minute})
	warm := dial(t, ts.addr)
	warm.mustLogin()
	warm.close()
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()

	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	flooded := make(chan error, 1)
	go func() {
		ping := make([]byte, 8192)
		var h pdu.Header
		cmdSN := in.cmdSN
		for i := uint32(0); i < 200000; i++ {
			var m interface{ Marshal(*pdu.Header) }
			var data []byte
			switch i % 5 {
			case 0: // immediate TEST UNIT READY
				m = &pdu.SCSICommand{Immediate: true, Final: true, ITT: i, CmdSN: cmdSN}
			case 1: // in the window while it lasts, then beyond it
				m = &pdu.SCSICommand{Final: true, ITT: i, CmdSN: cmdSN}
				cmdSN++
			case 2: // far outside the window
				m = &pdu.SCSICommand{Final: true, ITT: i, CmdSN: cmdSN + 1000}
			case 3:
				m = &pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTaskSet, ITT: i, ReferencedTaskTag: 0xffffffff, CmdSN: cmdSN}
			case 4:
				m, data = &pdu.NOPOut{Immediate: true, ITT: i, TTT: 0xffffffff, CmdSN: cmdSN}, ping
			}
			m.Marshal(&h)
			if err := in.w.WritePDU(&h, data); err != nil {
				flooded <- err
				return
			}
		}
		flooded <- in.w.Flush()
	}()
	// The flood blocks once the target stops reading; watch the
	// goroutines meanwhile.
	limit := base + DefaultQueueDepth + ImmediateCommands + tmfSlots + 8
	peak := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		peak = max(peak, runtime.NumGoroutine())
		if peak > limit {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	in.close()
	<-flooded
	t.Logf("goroutines: %d before, peak %d during the flood (limit %d)", base, peak, limit)
	if peak > limit {
		t.Fatalf("%d goroutines during the flood, more than %d: commands or TMFs are not bounded", peak, limit)
	}
}

func TestWasteWait(t *testing.T) {
	t0 := time.Unix(1000, 0)
	perPDU := time.Duration(wasteCost) * time.Second / wasteRate // header only
	burst := int(wasteBurst / perPDU)
	tests := []struct {
		name          string
		at, now       time.Time
		n             int
		minWait, wait time.Duration // wait in (minWait, wait]
	}{
		{"1 first PDU", time.Time{}, t0, 0, -wasteBurst, 0},
		{"2 last PDU of the burst", t0.Add(time.Duration(burst-1) * perPDU), t0, 0, -perPDU, 0},
		{"3 one past the burst waits one PDU's time", t0.Add(time.Duration(burst) * perPDU), t0, 0, 0, perPDU},
		{"4 data counts", t0.Add(wasteBurst), t0, 64 << 10, 0, time.Duration(wasteCost+64<<10) * time.Second / wasteRate},
		{"5 an idle connection starts afresh", t0, t0.Add(time.Hour), 0, -wasteBurst, 0},
	}
	for _, tc := range tests {
		at, wait := wasteWait(tc.at, tc.now, tc.n)
		if wait <= tc.minWait || wait > tc.wait {
			t.Errorf("%s: wait %v, want in (%v, %v]", tc.name, wait, tc.minWait, tc.wait)
		}
		if !at.After(tc.now) {
			t.Errorf("%s: clock %v not after now %v", tc.name, at, tc.now)
		}
	}
}

// An initiator that floods PDUs the target ignores (WRITEs far outside
// the window, each with 64 KiB of data) is read at a bounded rate: its
// writes block instead of having the target read and discard at wire
// speed. Unthrottled, loopback takes gigabytes in the 2 seconds; the
// allowance is 4 MiB a second after a burst of 4 MiB, and the socket
// buffers take some tens of MiB.
func TestIgnoredPDUsThrottled(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	data := make([]byte, 64<<10)
	cmd := pdu.SCSICommand{Final: true, Write: true, ITT: 99, ExpectedDataTransferLength: 64 << 10, CmdSN: in.cmdSN + 1000}
	copy(cmd.CDB[:], write10(0, 128))
	var h pdu.Header
	cmd.Marshal(&h)
	end := time.Now().Add(2 * time.Second)
	in.nc.SetWriteDeadline(end)
	sent := 0
	for {
		if err := in.w.WritePDU(&h, data); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
		sent += len(data)
		if time.Now().After(end) {
			break
		}
	}
	t.Logf("the target took %d MiB of ignored data in 2s", sent>>20)
	if sent > 256<<20 {
		t.Fatalf("the target took %d MiB of ignored data in 2s: not throttled", sent>>20)
	}
}

// Connections that never log in cannot pile up: at most maxLogins are in
// the login phase; a new one beyond that makes room by closing the one that
// has been logging in the longest (so idle connections cannot lock other
// initiators out of login either: TestIdleConnectionsDoNotLockOthersOutOfLogin).
func TestConnectionsLoggingInBounded(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	idle := idleConnections(t, ts.addr, maxLogins)
	// closed reports whether the target closes nc within d.
	closed := func(nc net.Conn, d time.Duration) bool {
		nc.SetReadDeadline(time.Now().Add(d))
		_, err := nc.Read(make([]byte, 1))
		return !errors.Is(err, os.ErrDeadlineExceeded)
	}
	for round := range 3 {
		nc, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		if !closed(idle[0], 2*time.Second) {
			t.Fatalf("round %d: the connection logging in the longest was not closed to make room", round)
		}
		if closed(nc, 200*time.Millisecond) {
			t.Fatalf("round %d: the new connection was closed", round)
		}
		idle[0].Close()
		idle = append(idle[1:], nc)
		t.Cleanup(func() { nc.Close() })
	}
	ts.srv.mu.Lock()
	inLogin := 0
	for c := range ts.srv.conns {
		if c.inLogin.Load() {
			inLogin++
		}
	}
	ts.srv.mu.Unlock()
	if inLogin > maxLogins {
		t.Fatalf("%d connections in the login phase, more than %d", inLogin, maxLogins)
	}
}
