package iscsi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	mrand "math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/pdu"
)

// onReader reports whether the calling goroutine is a connection's reader,
// that is whether a command runs inline.
func onReader() bool {
	buf := make([]byte, 64<<10)
	n := runtime.Stack(buf, false)
	return bytes.Contains(buf[:n], []byte("(*conn).fullFeature"))
}

// pathRecorder records, for each device access, whether it ran inline.
type pathRecorder struct {
	mu     sync.Mutex
	inline []bool
}

func recordPaths(d *memDevice) *pathRecorder {
	r := &pathRecorder{}
	hook := func(context.Context, bool) {
		in := onReader()
		r.mu.Lock()
		r.inline = append(r.inline, in)
		r.mu.Unlock()
	}
	d.hook.Store(&hook)
	return r
}

func (r *pathRecorder) take() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.inline
	r.inline = nil
	return out
}

func write16(lba uint64, blocks uint32) []byte {
	cdb := make([]byte, 16)
	cdb[0] = 0x8a
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], blocks)
	return cdb
}

func withFUA(cdb []byte) []byte { cdb[1] |= 0x08; return cdb }

// Small reads and non-FUA writes sent one at a time run on the reader
// goroutine; FUA writes and larger transfers do not. Either way the
// responses, residuals and data are the same.
func TestInlinePaths(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	rec := recordPaths(ts.dev)
	blk := func(n int) []byte { b := make([]byte, n); rand.Read(b); return b }
	w4k, w8k, w32k := blk(4096), blk(8192), blk(32768)
	tests := []struct {
		name      string
		cdb       []byte
		edtl      uint32
		read      bool
		out       []byte
		immediate int
		inline    bool
		resid     uint32
		over      bool
		under     bool
		want      []byte // Data-In expected
	}{
		{"1 4K write", write10(8, 8), 4096, false, w4k, 4096, true, 0, false, false, nil},
		{"2 4K read", read10(8, 8), 4096, true, nil, 0, true, 0, false, false, w4k},
		{"3 4K FUA write", withFUA(write10(8, 8)), 4096, false, w4k, 4096, false, 0, false, false, nil},
		{"4 WRITE (16) FUA", withFUA(write16(8, 8)), 4096, false, w4k, 4096, false, 0, false, false, nil},
		{"5 8K write by R2T", write10(64, 16), 8192, false, w8k, 0, true, 0, false, false, nil},
		{"6 8K read", read10(64, 16), 8192, true, nil, 0, true, 0, false, false, w8k},
		{"7 32K write", write16(128, 64), 32768, false, w32k, 8192, false, 0, false, false, nil},
		{"8 32K read", read10(128, 64), 32768, true, nil, 0, false, 0, false, false, w32k},
		{"9 read edtl 10000 for 1 block", read10(8, 1), 10000, true, nil, 0, true, 10000 - 512, false, true, w4k[:512]},
		{"10 read edtl 200 for 1 block", read10(8, 1), 200, true, nil, 0, true, 312, true, false, w4k[:200]},
		{"11 write edtl 1 block for 2", write10(256, 2), 512, false, w4k[:512], 512, true, 512, true, false, nil},
		{"12 read of 32K with edtl 4K", read10(128, 64), 4096, true, nil, 0, false, 28672, true, false, w32k[:4096]},
	}
	for _, tc := range tests {
		h, data, err := in.command(tc.cdb, tc.edtl, tc.read, tc.out, tc.immediate)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		st, resid, over, under := status(t, h)
		if st != 0 || resid != tc.resid || over != tc.over || under != tc.under {
			t.Errorf("%s: status %d residual %d over %v under %v", tc.name, st, resid, over, under)
		}
		if tc.read && !bytes.Equal(data, tc.want) {
			t.Errorf("%s: read %d bytes, not the %d written", tc.name, len(data), len(tc.want))
		}
		paths := rec.take()
		if len(paths) == 0 {
			t.Fatalf("%s: no device access", tc.name)
		}
		for _, p := range paths {
			if p != tc.inline {
				t.Errorf("%s: ran inline %v, want %v", tc.name, p, tc.inline)
			}
		}
	}
}

// pcmd is one command of a pipeline.
type pcmd struct {
	cdb       []byte
	edtl      uint32
	read      bool
	out       []byte
	immediate int
}

type presult struct {
	status uint8
	data   []byte
}

// pipeline sends cmds back to back in one segment, answers R2Ts, and
// returns each command's status and Data-In in the order of cmds. It fails
// the test unless every status carries the next StatSN.
func (in *initiator) pipeline(t *testing.T, cmds []pcmd) []presult {
	t.Helper()
	first := in.itt
	for _, c := range cmds {
		cmd := pdu.SCSICommand{Final: true, Read: c.read, Write: c.out != nil, ITT: in.itt,
			ExpectedDataTransferLength: c.edtl, CmdSN: in.cmdSN, ExpStatSN: in.statSN}
		copy(cmd.CDB[:], c.cdb)
		in.itt++
		in.cmdSN++
		var h pdu.Header
		cmd.Marshal(&h)
		if err := in.w.WritePDU(&h, c.out[:min(c.immediate, len(c.out))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.w.Flush(); err != nil {
		t.Fatal(err)
	}
	res := make([]presult, len(cmds))
	answered := make([]bool, len(cmds))
	idx := func(itt uint32) int {
		i := int(itt - first)
		if i < 0 || i >= len(cmds) || answered[i] {
			t.Fatalf("PDU for ITT 0x%x, not an open command", itt)
		}
		return i
	}
	statusIn := func(i int, sn uint32, st uint8) {
		if sn != in.statSN {
			t.Fatalf("command %d: StatSN %d, want %d", i, sn, in.statSN)
		}
		in.statSN++
		res[i].status = st
		answered[i] = true
	}
	for left := len(cmds); left > 0; {
		h, data, err := in.recv()
		if err != nil {
			t.Fatal(err)
		}
		switch h.Opcode() {
		case pdu.OpR2T:
			var r pdu.R2T
			r.Unmarshal(&h)
			c := cmds[idx(r.ITT)]
			end := min(int(r.BufferOffset+r.DesiredLength), len(c.out))
			if err := in.send(&pdu.DataOut{Final: true, ITT: r.ITT, TTT: r.TTT, BufferOffset: r.BufferOffset},
				c.out[r.BufferOffset:end]); err != nil {
				t.Fatal(err)
			}
		case pdu.OpDataIn:
			var d pdu.DataIn
			d.Unmarshal(&h)
			i := idx(d.ITT)
			res[i].data = append(res[i].data, data...)
			if d.StatusPresent {
				statusIn(i, d.StatSN, d.Status)
				left--
			}
		case pdu.OpSCSIResponse:
			var r pdu.SCSIResponse
			r.Unmarshal(&h)
			statusIn(idx(r.ITT), r.StatSN, r.Status)
			left--
		case pdu.OpNOPIn:
		default:
			t.Fatalf("unexpected %v", h.Opcode())
		}
	}
	return res
}

// Commands arriving together run side by side, not inline: the first of
// them finds the next already read.
func TestInlineNotWhenMoreIsBuffered(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	rec := recordPaths(ts.dev)
	var cmds []pcmd
	for i := range 4 {
		cmds = append(cmds, pcmd{cdb: read10(uint32(8*i), 8), edtl: 4096, read: true})
	}
	for i, r := range in.pipeline(t, cmds) {
		if r.status != 0 || len(r.data) != 4096 {
			t.Fatalf("read %d: status %d, %d bytes", i, r.status, len(r.data))
		}
	}
	if paths := rec.take(); len(paths) != 4 || paths[0] {
		t.Fatalf("paths %v: the first of four buffered reads ran inline", paths)
	}
}

// A stream of single small commands (inline) interleaved with batches of
// larger and pipelined ones (goroutines, R2T, send from the device): every
// status comes with the next StatSN, and reads return what was written.
func TestInlineStreamWithLargeCommands(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin()
	rec := recordPaths(ts.dev)
	rng := mrand.New(mrand.NewPCG(1, 2))
	const slot = 1 << 20 // each command of a batch has a slot of its own
	model := make([]byte, len(ts.dev.data))
	ts.dev.mu.Lock()
	copy(model, ts.dev.data)
	ts.dev.mu.Unlock()
	nInline, nOther := 0, 0
	for round := range 150 {
		n := 1
		if rng.IntN(2) == 0 {
			n = 2 + rng.IntN(4)
		}
		slots := rng.Perm(len(model) / slot)[:n]
		cmds := make([]pcmd, n)
		for i := range cmds {
			var size int
			switch rng.IntN(4) {
			case 0, 1:
				size = 4096
			case 2:
				size = 32 << 10
			default:
				size = 256 << 10
			}
			lba := uint64(slots[i]*slot+rng.IntN((slot-size)/4096)*4096) / 512
			if rng.IntN(2) == 0 {
				cmds[i] = pcmd{cdb: read10(uint32(lba), uint16(size/512)), edtl: uint32(size), read: true}
			} else {
				out := make([]byte, size)
				rand.Read(out)
				cmds[i] = pcmd{cdb: write16(lba, uint32(size/512)), edtl: uint32(size), out: out, immediate: min(size, 8192)}
			}
		}
		for i, r := range in.pipeline(t, cmds) {
			c := cmds[i]
			if r.status != 0 {
				t.Fatalf("round %d command %d: status %#x", round, i, r.status)
			}
			lba, _ := rwOf(c.cdb)
			off := int(lba) * 512
			if c.read {
				if !bytes.Equal(r.data, model[off:off+int(c.edtl)]) {
					t.Fatalf("round %d command %d: read of %d bytes at %d differs", round, i, c.edtl, off)
				}
			} else {
				copy(model[off:], c.out)
			}
		}
		for _, p := range rec.take() {
			if p {
				nInline++
			} else {
				nOther++
			}
		}
	}
	ts.dev.mu.Lock()
	same := bytes.Equal(ts.dev.data, model)
	ts.dev.mu.Unlock()
	if !same {
		t.Fatal("device content differs from what was written")
	}
	if nInline == 0 || nOther == 0 {
		t.Fatalf("device accesses: %d inline, %d on goroutines; want both", nInline, nOther)
	}
	t.Logf("device accesses: %d inline, %d on goroutines", nInline, nOther)
}

func rwOf(cdb []byte) (lba uint64, blocks uint32) {
	if cdb[0] == 0x8a {
		return binary.BigEndian.Uint64(cdb[2:]), binary.BigEndian.Uint32(cdb[10:])
	}
	return uint64(binary.BigEndian.Uint32(cdb[2:])), uint32(binary.BigEndian.Uint16(cdb[7:]))
}

// blockDevice makes the next device access report whether it runs inline
// and wait for release, or for its command to be aborted.
func blockDevice(d *memDevice) (started <-chan bool, release chan struct{}) {
	s := make(chan bool, 1)
	release = make(chan struct{})
	var once sync.Once
	hook := func(ctx context.Context, _ bool) {
		first := false
		once.Do(func() { first = true })
		if first {
			s <- onReader()
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
	}
	d.hook.Store(&hook)
	return s, release
}

// sendRead sends READ (10) of 8 blocks without waiting and returns its ITT
// and CmdSN.
func (in *initiator) sendRead(t *testing.T, lba uint32) (itt, cmdSN uint32) {
	t.Helper()
	itt, cmdSN = in.itt, in.cmdSN
	in.itt++
	in.cmdSN++
	cmd := pdu.SCSICommand{Final: true, Read: true, ITT: itt, ExpectedDataTransferLength: 4096, CmdSN: cmdSN, ExpStatSN: in.statSN}
	copy(cmd.CDB[:], read10(lba, 8))
	if err := in.send(&cmd, nil); err != nil {
		t.Fatal(err)
	}
	return itt, cmdSN
}

// A LUN RESET from another connection aborts a command executing inline:
// the reset is answered once the command's Execute has returned, the
// command never is, and its connection carries on with the next StatSN.
func TestInlineCommandAbortedFromAnotherConnection(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	a, b := dial(t, ts.addr), dial(t, ts.addr)
	defer a.close()
	defer b.close()
	a.mustLogin()
	b.isid[5] = 2
	b.mustLogin()
	started, release := blockDevice(ts.dev)
	defer close(release) // the abort, not release, lets the read go on
	readITT, _ := a.sendRead(t, 0)
	if !<-started {
		t.Fatal("the read does not run inline")
	}
	tmf := pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFLogicalUnitReset, ITT: b.itt,
		ReferencedTaskTag: 0xffffffff, CmdSN: b.cmdSN, ExpStatSN: b.statSN}
	b.itt++
	if err := b.send(&tmf, nil); err != nil {
		t.Fatal(err)
	}
	for {
		h, _, err := b.recv()
		if err != nil {
			t.Fatal(err)
		}
		if h.Opcode() == pdu.OpTaskMgmtResp {
			var r pdu.TaskMgmtResponse
			r.Unmarshal(&h)
			if r.Response != pdu.TMFComplete {
				t.Fatalf("LUN RESET response %d", r.Response)
			}
			break
		}
	}
	turITT := a.itt
	h, _, err := a.command(make([]byte, 6), 0, false, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var r pdu.SCSIResponse
	r.Unmarshal(&h)
	if r.ITT != turITT {
		t.Fatalf("answer for ITT 0x%x (the aborted read is 0x%x), want the TEST UNIT READY's 0x%x", r.ITT, readITT, turITT)
	}
	if r.StatSN+1 != a.statSN || r.StatSN != 3 {
		// Login took StatSN 0, the unit attention's TEST UNIT READYs 1
		// and 2: the aborted read took none.
		t.Fatalf("TEST UNIT READY StatSN %d, want 3", r.StatSN)
	}
}

// ABORT TASK on the connection of a command executing inline is read only
// once the command has finished: the command is answered, then the abort
// finds no task.
func TestInlineCommandThenAbortTask(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1})
	a := dial(t, ts.addr)
	defer a.close()
	a.mustLogin()
	started, release := blockDevice(ts.dev)
	readITT, readCmdSN := a.sendRead(t, 0)
	if !<-started {
		t.Fatal("the read does not run inline")
	}
	tmf := pdu.TaskMgmtRequest{Immediate: true, Function: pdu.TMFAbortTask, ITT: a.itt,
		ReferencedTaskTag: readITT, RefCmdSN: readCmdSN, CmdSN: a.cmdSN, ExpStatSN: a.statSN}
	a.itt++
	if err := a.send(&tmf, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // let the abort reach the target first
	close(release)
	h, data, err := a.recv()
	if err != nil {
		t.Fatal(err)
	}
	var d pdu.DataIn
	d.Unmarshal(&h)
	if h.Opcode() != pdu.OpDataIn || d.ITT != readITT || !d.StatusPresent || d.Status != 0 || len(data) != 4096 || d.StatSN != a.statSN {
		t.Fatalf("first answer %v ITT 0x%x status %v/%d, %d bytes, StatSN %d; want the read's, GOOD, StatSN %d",
			h.Opcode(), d.ITT, d.StatusPresent, d.Status, len(data), d.StatSN, a.statSN)
	}
	h, _, err = a.recv()
	if err != nil {
		t.Fatal(err)
	}
	var r pdu.TaskMgmtResponse
	r.Unmarshal(&h)
	if h.Opcode() != pdu.OpTaskMgmtResp || r.Response != pdu.TMFTaskDoesNotExist || r.StatSN != a.statSN+1 {
		t.Fatalf("then %v response %d StatSN %d; want ABORT TASK's, task does not exist, StatSN %d", h.Opcode(), r.Response, r.StatSN, a.statSN+1)
	}
}

func TestQuickCDB(t *testing.T) {
	cdb := func(b ...byte) []byte { c := make([]byte, 16); copy(c, b); return c }
	tests := []struct {
		name string
		cdb  []byte
		want bool
	}{
		{"1 READ (6) 8 blocks", cdb(0x08, 0, 0, 0, 8), true},
		{"2 READ (6) 0 means 256 blocks", cdb(0x08, 0, 0, 0, 0), false},
		{"3 WRITE (6) 32 blocks", cdb(0x0a, 0, 0, 0, 32), true},
		{"4 WRITE (6) 33 blocks", cdb(0x0a, 0, 0, 0, 33), false},
		{"5 READ (10) 32 blocks", read10(0, 32), true},
		{"6 READ (10) 33 blocks", read10(0, 33), false},
		{"7 READ (10) FUA", withFUA(read10(0, 8)), true},
		{"8 WRITE (10)", write10(0, 8), true},
		{"9 WRITE (10) FUA", withFUA(write10(0, 8)), false},
		{"10 READ (12) 8 blocks", cdb(0xa8, 0, 0, 0, 0, 0, 0, 0, 0, 8), true},
		{"11 WRITE (12) FUA", cdb(0xaa, 0x08, 0, 0, 0, 0, 0, 0, 0, 8), false},
		{"12 READ (16) 1<<16 blocks", cdb(0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0), false},
		{"13 WRITE (16)", write16(0, 8), true},
		{"14 WRITE (16) FUA", withFUA(write16(0, 8)), false},
		{"15 WRITE AND VERIFY (10)", cdb(0x2e, 0, 0, 0, 0, 0, 0, 0, 8), false},
		{"16 WRITE SAME (16)", cdb(0x93, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8), false},
		{"17 SYNCHRONIZE CACHE (10)", cdb(0x35), false},
		{"18 UNMAP", cdb(0x42), false},
		{"19 COMPARE AND WRITE", cdb(0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1), false},
		{"20 TEST UNIT READY", cdb(0x00), false},
	}
	for _, tc := range tests {
		if got := quickCDB(tc.cdb); got != tc.want {
			t.Errorf("%s: quickCDB = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// An initiator that sends commands one at a time and never reads the
// answers fills its socket with inline responses until the reader's own
// write blocks: the write deadline drops it, as it drops a blocked writer.
func TestInlineInitiatorThatStopsReadingIsDropped(t *testing.T) {
	ts := startServer(t, Auth{}, Config{NOPInterval: -1, NOPTimeout: 500 * time.Millisecond})
	in := dial(t, ts.addr)
	defer in.close()
	in.nc.(*net.TCPConn).SetReadBuffer(4096)
	in.mustLogin()
	rec := recordPaths(ts.dev)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := uint32(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cmd := pdu.SCSICommand{Final: true, Read: true, ITT: 100 + i, ExpectedDataTransferLength: 4096, CmdSN: in.cmdSN}
			copy(cmd.CDB[:], read10(8*(i%1024), 8))
			in.cmdSN++
			in.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if in.send(&cmd, nil) != nil {
				return
			}
			time.Sleep(100 * time.Microsecond) // one at a time: each arrives alone
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for len(ts.srv.Sessions("")) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if s := ts.srv.Sessions(""); len(s) > 0 {
		t.Fatalf("the session of an initiator that stopped reading is still there after 20s: %+v", s)
	}
	inline := 0
	for _, p := range rec.take() {
		if p {
			inline++
		}
	}
	if inline == 0 {
		t.Fatal("no command ran inline")
	}
	t.Logf("%d commands ran inline before the connection was dropped", inline)
}
