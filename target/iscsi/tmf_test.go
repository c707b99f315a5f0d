package iscsi

import (
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
