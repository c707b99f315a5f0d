package iscsi

import (
	"bytes"
	"encoding/binary"
	"testing"

	"tandem.io/tandem/target/iscsi/pdu"
)

// A LUN RESET aborts the commands received before it before it raises its
// unit attention: such a command is answered GOOD (it finished first) or
// not at all (aborted), never CHECK CONDITION with the reset's own unit
// attention. The WRITE and the reset go out in one segment, so the reset
// arrives while the WRITE is being started.
func TestLUNResetAbortsBeforeItsUnitAttention(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	a := dial(t, ts.addr)
	defer a.close()
	a.mustLogin()
	data := make([]byte, 4096)
	answered, aborted := 0, 0
	for i := range 150 {
		writeITT := a.itt
		cmd := pdu.SCSICommand{Final: true, Write: true, ITT: writeITT, ExpectedDataTransferLength: 4096,
			CmdSN: a.cmdSN, ExpStatSN: a.statSN}
		copy(cmd.CDB[:], write10(uint32(i), 8))
		a.cmdSN++
		tmf := pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFLogicalUnitReset, ITT: writeITT + 1,
			ReferencedTaskTag: 0xffffffff, CmdSN: a.cmdSN, ExpStatSN: a.statSN}
		a.itt += 2
		var h pdu.Header
		cmd.Marshal(&h)
		if err := a.w.WritePDU(&h, data); err != nil {
			t.Fatal(err)
		}
		tmf.Marshal(&h)
		if err := a.w.WritePDU(&h, nil); err != nil {
			t.Fatal(err)
		}
		if err := a.w.Flush(); err != nil {
			t.Fatal(err)
		}
		gotWrite := false
		for done := false; !done; {
			h, data, err := a.recv()
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			switch h.Opcode() {
			case pdu.OpSCSIResponse:
				var r pdu.SCSIResponse
				r.Unmarshal(&h)
				a.statSN = r.StatSN + 1
				if r.ITT != writeITT || gotWrite {
					t.Fatalf("round %d: unexpected response for ITT 0x%x", i, r.ITT)
				}
				gotWrite = true
				if r.Status != 0 {
					t.Fatalf("round %d: WRITE sent before the LUN RESET answered status 0x%x, sense % x", i, r.Status, data)
				}
			case pdu.OpTaskMgmtResp:
				var r pdu.TaskMgmtResponse
				r.Unmarshal(&h)
				a.statSN = r.StatSN + 1
				if r.Response != pdu.TMFComplete {
					t.Fatalf("round %d: LUN RESET response %d", i, r.Response)
				}
				done = true
			case pdu.OpNOPIn:
			default:
				t.Fatalf("round %d: unexpected %v", i, h.Opcode())
			}
		}
		if gotWrite {
			answered++
		} else {
			aborted++
		}
		// The reset's unit attention is for every nexus, this one too:
		// clear it as an initiator would before the next round.
		for range 3 {
			h, _, err := a.command(make([]byte, 6), 0, false, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			if s, _, _, _ := status(t, h); s == 0 {
				break
			}
		}
	}
	t.Logf("WRITE before LUN RESET: %d answered GOOD, %d aborted", answered, aborted)
}

// prOut is PERSISTENT RESERVE OUT with a 24-byte parameter list.
func prOut(action, typ byte, key, saKey uint64) ([]byte, []byte) {
	cdb := []byte{0x5f, action, typ, 0, 0, 0, 0, 0, 24, 0}
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	return cdb, p
}

// A task of initiator B aborted by A, from another connection, while it
// waits for its data is never answered and never reaches the medium, even
// though B then sends the data: for PREEMPT AND ABORT of B's key, and for
// a LUN RESET.
func TestAbortFromAnotherConnection(t *testing.T) {
	for _, c := range []struct {
		name    string
		prepare func(t *testing.T, a, b *initiator)
		abort   func(t *testing.T, a *initiator)
	}{
		{"preempt and abort", func(t *testing.T, a, b *initiator) {
			registerAndReserve(t, a, b)
		}, func(t *testing.T, a *initiator) {
			cdb, p := prOut(5, 1, 0xa, 0xb)
			h, _, err := a.command(cdb, 24, false, p, 24)
			if err != nil {
				t.Fatal(err)
			}
			if s, _, _, _ := status(t, h); s != 0 {
				t.Fatalf("PREEMPT AND ABORT: status %#x", s)
			}
		}},
		{"LUN reset", func(*testing.T, *initiator, *initiator) {}, func(t *testing.T, a *initiator) {
			tmf := pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFLogicalUnitReset, ITT: a.itt,
				ReferencedTaskTag: 0xffffffff, CmdSN: a.cmdSN, ExpStatSN: a.statSN}
			a.itt++
			if err := a.send(&tmf, nil); err != nil {
				t.Fatal(err)
			}
			for {
				h, _, err := a.recv()
				if err != nil {
					t.Fatal(err)
				}
				if h.Opcode() == pdu.OpTaskMgmtResp {
					var r pdu.TaskMgmtResponse
					r.Unmarshal(&h)
					a.statSN = r.StatSN + 1
					if r.Response != pdu.TMFComplete {
						t.Fatalf("LUN RESET response %d", r.Response)
					}
					return
				}
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := startServer(t, Auth{}, Config{NOPInterval: -1})
			a, b := dial(t, ts.addr), dial(t, ts.addr)
			defer a.close()
			defer b.close()
			a.mustLogin()
			b.isid[5] = 2
			b.mustLogin()
			c.prepare(t, a, b)

			// B's WRITE, without immediate data: the target asks for
			// the data with R2T.
			writeITT := b.itt
			b.itt++
			cmd := pdu.SCSICommand{Final: true, Write: true, ITT: writeITT, ExpectedDataTransferLength: 4096, CmdSN: b.cmdSN, ExpStatSN: b.statSN}
			copy(cmd.CDB[:], write10(64, 8))
			b.cmdSN++
			if err := b.send(&cmd, nil); err != nil {
				t.Fatal(err)
			}
			h, _, err := b.recv()
			if err != nil || h.Opcode() != pdu.OpR2T {
				t.Fatalf("no R2T for B's WRITE: %v %v", h.Opcode(), err)
			}
			var r2t pdu.R2T
			r2t.Unmarshal(&h)

			c.abort(t, a)

			// B's TEST UNIT READY: answered (with the unit attention
			// the abort left, which is then cleared), while the WRITE
			// never is.
			tur := func() {
				turITT := b.itt
				b.itt++
				tur := pdu.SCSICommand{Final: true, ITT: turITT, CmdSN: b.cmdSN, ExpStatSN: b.statSN}
				b.cmdSN++
				if err := b.send(&tur, nil); err != nil {
					t.Fatal(err)
				}
				for {
					h, _, err := b.recv()
					if err != nil {
						t.Fatal(err)
					}
					if h.Opcode() != pdu.OpSCSIResponse {
						continue
					}
					var r pdu.SCSIResponse
					r.Unmarshal(&h)
					b.statSN = r.StatSN + 1
					if r.ITT == writeITT {
						t.Fatalf("the aborted WRITE was answered, status %#x", r.Status)
					}
					if r.ITT == turITT {
						return
					}
				}
			}
			tur()
			if err := b.send(&pdu.DataOut{Final: true, ITT: writeITT, TTT: r2t.TTT}, bytes.Repeat([]byte{0xbb}, 4096)); err != nil {
				t.Fatal(err)
			}
			tur()
			tur()
			ts.dev.mu.Lock()
			written := bytes.Contains(ts.dev.data[64*512:72*512], []byte{0xbb})
			ts.dev.mu.Unlock()
			if written {
				t.Fatal("the aborted WRITE reached the medium")
			}
		})
	}
}
