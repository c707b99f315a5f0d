package iscsi

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/pdu"
)

// gateDevice is a memDevice whose writes into one range stop inside the
// device until the test releases them, ignoring their context as a layer's
// pwrite does. It logs when each such write's bytes reach the medium, in
// one log the test also writes to, so that the order of "the bytes landed"
// and "the fencing host got its answer" can be checked.
type gateDevice struct {
	*memDevice
	gateOff, gateEnd int64
	entered          chan int64    // the offset of each write held at the gate
	release          chan struct{} // closed to let them through

	logMu sync.Mutex // protects events
	log   []string
}

func newGateDevice(gateOff, gateEnd int64) *gateDevice {
	return &gateDevice{memDevice: &memDevice{data: make([]byte, 16<<20)}, gateOff: gateOff, gateEnd: gateEnd,
		entered: make(chan int64, 16), release: make(chan struct{})}
}

func (d *gateDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if off < d.gateEnd && off+int64(len(p)) > d.gateOff {
		d.entered <- off
		<-d.release
		defer d.event(fmt.Sprintf("write at %d landed", off))
	}
	return d.memDevice.WriteAt(ctx, p, off, fua)
}

func (d *gateDevice) event(e string) {
	d.logMu.Lock()
	d.log = append(d.log, e)
	d.logMu.Unlock()
}

func (d *gateDevice) events() []string {
	d.logMu.Lock()
	defer d.logMu.Unlock()
	return slices.Clone(d.log)
}

// tmf sends a task management request and reads until its response,
// keeping StatSN; it does not use t, so it may run in a goroutine.
func (in *initiator) tmf(function uint8) (pdu.TaskMgmtResponse, error) {
	req := pdu.TaskMgmtRequest{Immediate: true, Function: function, ITT: in.itt,
		ReferencedTaskTag: 0xffffffff, CmdSN: in.cmdSN, ExpStatSN: in.statSN}
	in.itt++
	if err := in.send(&req, nil); err != nil {
		return pdu.TaskMgmtResponse{}, err
	}
	for {
		h, _, err := in.recv()
		if err != nil {
			return pdu.TaskMgmtResponse{}, err
		}
		if h.Opcode() == pdu.OpTaskMgmtResp {
			var r pdu.TaskMgmtResponse
			r.Unmarshal(&h)
			in.statSN = r.StatSN + 1
			return r, nil
		}
	}
}

// A host that fences another — PREEMPT AND ABORT of its key, LUN RESET,
// TARGET WARM RESET — is answered only once none of the other host's
// commands can reach the disk any more. B's WRITE is inside a slow device
// that ignores cancellation (as a layer's pwrite does): A's answer must
// wait for it to leave, and B's bytes must never land after A's answer.
// Clustered file systems (VMFS, GFS2, Windows failover clusters) rely on
// exactly this. In the "not reading" cases B has stopped reading its
// responses, so its connection cannot send anything: the fence must not
// depend on B's responses, only on B's commands having ended.
func TestFenceWaitsForVictimsInsideTheDevice(t *testing.T) {
	preemptAndAbort := func(a *initiator) error {
		cdb, p := prOut(5, 1, 0xa, 0xb)
		h, _, err := a.command(cdb, 24, false, p, 24)
		if err != nil {
			return err
		}
		var r pdu.SCSIResponse
		if err := r.Unmarshal(&h); err != nil || r.Status != 0 {
			return fmt.Errorf("PREEMPT AND ABORT: %v, status %#x", err, r.Status)
		}
		return nil
	}
	reset := func(function uint8) func(a *initiator) error {
		return func(a *initiator) error {
			r, err := a.tmf(function)
			if err == nil && r.Response != pdu.TMFComplete {
				err = fmt.Errorf("task management response %d", r.Response)
			}
			return err
		}
	}
	for _, c := range []struct {
		name        string
		reservation bool // B holds a reservation A preempts
		bStalled    bool // B stopped reading: its connection's writer is stuck
		fence       func(a *initiator) error
	}{
		{"preempt and abort", true, false, preemptAndAbort},
		{"LUN reset", false, false, reset(pdu.TMFLogicalUnitReset)},
		{"target warm reset", false, false, reset(pdu.TMFTargetWarmReset)},
		{"preempt and abort, B not reading", true, true, preemptAndAbort},
		{"LUN reset, B not reading", false, true, reset(pdu.TMFLogicalUnitReset)},
	} {
		t.Run(c.name, func(t *testing.T) {
			dev := newGateDevice(64*512, 72*512)
			ts := startServerOn(t, Auth{}, Config{NOPInterval: -1}, dev, dev.memDevice)
			a, b := dial(t, ts.addr), dial(t, ts.addr)
			defer a.close()
			defer b.close()
			a.mustLogin()
			b.isid[5] = 2
			b.mustLogin()
			if c.reservation {
				registerAndReserve(t, a, b)
			}
			if c.bStalled {
				// 64 MiB of READs B never reads: far more than the
				// socket buffers hold, so B's connection cannot send.
				for range 64 {
					cmd := pdu.SCSICommand{Final: true, Read: true, ITT: b.itt, ExpectedDataTransferLength: 1 << 20,
						CmdSN: b.cmdSN, ExpStatSN: b.statSN}
					copy(cmd.CDB[:], read10(2048, 2048))
					b.itt++
					b.cmdSN++
					var h pdu.Header
					cmd.Marshal(&h)
					if err := b.w.WritePDU(&h, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
			// B's WRITE, its data sent as immediate data: it executes at
			// once and stops inside the device.
			cmd := pdu.SCSICommand{Final: true, Write: true, ITT: b.itt, ExpectedDataTransferLength: 4096,
				CmdSN: b.cmdSN, ExpStatSN: b.statSN}
			copy(cmd.CDB[:], write10(64, 8))
			b.itt++
			b.cmdSN++
			if err := b.send(&cmd, bytes.Repeat([]byte{0xbb}, 4096)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-dev.entered:
			case <-time.After(5 * time.Second):
				t.Fatal("B's WRITE never reached the device")
			}

			answered := make(chan error, 1)
			go func() {
				err := c.fence(a)
				dev.event("A answered")
				answered <- err
			}()
			early := false
			select {
			case err := <-answered:
				early = true
				t.Errorf("A was answered (err %v) while B's WRITE was still inside the device", err)
			case <-time.After(300 * time.Millisecond):
			}
			close(dev.release)
			if !early {
				select {
				case err := <-answered:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("A not answered 10s after B's WRITE left the device")
				}
			}
			// Give a write that was let through after A's answer the
			// time to land, then check the order.
			deadline := time.Now().Add(2 * time.Second)
			for !slices.ContainsFunc(dev.events(), func(e string) bool { return strings.HasSuffix(e, "landed") }) &&
				time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			ev := dev.events()
			if i := slices.Index(ev, "A answered"); i < 0 || slices.ContainsFunc(ev[i:], func(e string) bool { return strings.HasSuffix(e, "landed") }) {
				t.Errorf("B's write reached the device after A was answered: %q", ev)
			}
		})
	}
}

// registerAndReserve registers a with key 0xa and b with 0xb, then b
// reserves WRITE EXCLUSIVE: the stage for a PREEMPT AND ABORT of b by a.
func registerAndReserve(t *testing.T, a, b *initiator) {
	t.Helper()
	for _, reg := range []struct {
		in  *initiator
		key uint64
	}{{a, 0xa}, {b, 0xb}} {
		cdb, p := prOut(0, 0, 0, reg.key)
		h, _, err := reg.in.command(cdb, 24, false, p, 24)
		if s, _, _, _ := status(t, h); err != nil || s != 0 {
			t.Fatalf("REGISTER 0x%x: status %#x, %v", reg.key, s, err)
		}
	}
	cdb, p := prOut(1, 1, 0xb, 0)
	if h, _, err := b.command(cdb, 24, false, p, 24); err != nil || h.Opcode() != pdu.OpSCSIResponse {
		t.Fatalf("RESERVE 0xb: %v", err)
	}
}

// idleConnections opens n connections to addr that never log in, closed at
// the end of the test.
func idleConnections(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var idle []net.Conn
	t.Cleanup(func() {
		for _, nc := range idle {
			nc.Close()
		}
	})
	for range n {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, nc)
		time.Sleep(time.Millisecond) // distinct arrival times
	}
	return idle
}
