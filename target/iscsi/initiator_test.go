package iscsi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/login"
	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
	"tandem.io/tandem/volume/block"
)

// memDevice is an in-memory block.Device for tests.
type memDevice struct {
	mu   sync.Mutex
	data []byte
	// hook, when set, runs at the start of every ReadAt and WriteAt.
	hook atomic.Pointer[func(ctx context.Context, write bool)]
	// failSendAt, when > 0, is an offset SendTo cannot read.
	failSendAt atomic.Int64
}

func (d *memDevice) Size() int64 { return int64(len(d.data)) }
func (d *memDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if h := d.hook.Load(); h != nil {
		(*h)(ctx, false)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.data)) {
		return block.ErrOutOfRange
	}
	copy(p, d.data[off:])
	return nil
}
func (d *memDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if h := d.hook.Load(); h != nil {
		(*h)(ctx, true)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.data)) {
		return block.ErrOutOfRange
	}
	copy(d.data[off:], p)
	return nil
}
func (d *memDevice) Flush(ctx context.Context) error { return nil }

// SendTo makes memDevice a block.Sender, so that large reads take the
// transport's send-from-device path as they do with volumes.
// A device read error can be injected at an offset (failSendAt > 0):
// SendTo sends the bytes before it and reports a medium error.
func (d *memDevice) SendTo(ctx context.Context, dst syscall.Conn, off, n int64) (int64, error) {
	d.mu.Lock()
	p := append([]byte(nil), d.data[off:off+n]...)
	d.mu.Unlock()
	var fail error
	if at := d.failSendAt.Load(); at > 0 && at >= off && at < off+n {
		p, fail = p[:at-off], fmt.Errorf("injected: %w", block.ErrMedium)
	}
	k, err := dst.(io.Writer).Write(p)
	if err == nil {
		err = fail
	}
	return int64(k), err
}

const testIQN = "iqn.2026-11.io.tandem:test"

// testServer runs a Server with one target over a memDevice on loopback.
type testServer struct {
	srv  *Server
	addr string
	dev  *memDevice
	done chan error
}

func startServer(t testing.TB, auth Auth, cfg Config) *testServer {
	t.Helper()
	dev := &memDevice{data: make([]byte, 16<<20)}
	return startServerOn(t, auth, cfg, dev, dev)
}

// startServerOn serves LUN 0 from dev; mem is the memory dev keeps its
// data in, for tests that look at the medium.
func startServerOn(t testing.TB, auth Auth, cfg Config, dev block.Device, mem *memDevice) *testServer {
	t.Helper()
	lu, err := scsi.NewLogicalUnit(scsi.LUConfig{Device: dev, Serial: "test0001", NAA: [16]byte{0x60, 1, 2, 3}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LogicalUnit{0: lu}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddTarget(TargetConfig{Name: testIQN, Auth: auth, SCSI: st}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, addr: ln.Addr().String(), dev: mem, done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-ts.done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return ts
}

// initiator is a minimal iSCSI initiator for protocol tests.
type initiator struct {
	t      testing.TB
	nc     net.Conn
	r      pdu.Reader
	w      pdu.Writer
	itt    uint32
	cmdSN  uint32
	statSN uint32
	isid   [6]byte
	tsih   uint16
	name   string // initiator name; "" for iqn.2026-11.io.tandem:test-initiator
}

func dial(t testing.TB, addr string) *initiator {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &initiator{t: t, nc: nc, r: pdu.Reader{R: bufio.NewReader(nc), MaxDataSegmentLength: 1 << 20},
		w: pdu.Writer{Dst: nc}, itt: 1, cmdSN: 1, isid: [6]byte{0x80, 0, 0, 0, 0, 1}}
}

func (in *initiator) send(m interface{ Marshal(*pdu.Header) }, data []byte) error {
	var h pdu.Header
	m.Marshal(&h)
	if err := in.w.WritePDU(&h, data); err != nil {
		return err
	}
	return in.w.Flush()
}

func (in *initiator) recv() (pdu.Header, []byte, error) {
	var h pdu.Header
	if _, err := in.r.ReadHeader(&h); err != nil {
		return h, nil, err
	}
	data := make([]byte, h.DataSegmentLength())
	err := in.r.ReadData(&h, data)
	return h, data, err
}

// login logs in with the given extra keys, in one operational stage.
func (in *initiator) login(target string, keys ...string) (pdu.LoginResponse, []login.Pair, error) {
	name := in.name
	if name == "" {
		name = "iqn.2026-11.io.tandem:test-initiator"
	}
	kv := []string{"InitiatorName=" + name, "SessionType=Normal"}
	if target != "" {
		kv = append(kv, "TargetName="+target)
	} else {
		kv[1] = "SessionType=Discovery"
	}
	kv = append(kv, keys...)
	text := []byte(strings.Join(kv, "\x00") + "\x00")
	req := pdu.LoginRequest{Transit: true, CSG: 1, NSG: 3, ISID: in.isid, ITT: in.itt, CmdSN: in.cmdSN}
	if err := in.send(&req, text); err != nil {
		return pdu.LoginResponse{}, nil, err
	}
	h, data, err := in.recv()
	if err != nil {
		return pdu.LoginResponse{}, nil, err
	}
	var resp pdu.LoginResponse
	if err := resp.Unmarshal(&h); err != nil {
		return resp, nil, err
	}
	pairs, err := login.ParseText(data)
	in.statSN = resp.StatSN + 1
	in.tsih = resp.TSIH
	for _, p := range pairs {
		switch p.Key {
		case "HeaderDigest":
			in.r.HeaderDigest, in.w.HeaderDigest = p.Value == "CRC32C", p.Value == "CRC32C"
		case "DataDigest":
			in.r.DataDigest, in.w.DataDigest = p.Value == "CRC32C", p.Value == "CRC32C"
		}
	}
	return resp, pairs, err
}

func (in *initiator) mustLogin(keys ...string) {
	in.t.Helper()
	resp, _, err := in.login(testIQN, keys...)
	if err != nil || resp.StatusClass != 0 || !resp.Transit {
		in.t.Fatalf("login: %v status %d/%d", err, resp.StatusClass, resp.StatusDetail)
	}
	// A new I_T nexus first sees POWER ON unit attention; clear it the
	// way initiators do, with TEST UNIT READY.
	for i := 0; i < 3; i++ {
		h, _, err := in.command(make([]byte, 6), 0, false, nil, 0)
		if err != nil {
			in.t.Fatal(err)
		}
		var r pdu.SCSIResponse
		if r.Unmarshal(&h) == nil && r.Status == 0 {
			return
		}
	}
	in.t.Fatal("unit attention does not clear")
}

// command sends a SCSI command with optional immediate data and returns the
// header of the PDU carrying status, and all Data-In. R2Ts are answered.
func (in *initiator) command(cdb []byte, edtl uint32, read bool, out []byte, immediate int) (pdu.Header, []byte, error) {
	itt := in.itt
	in.itt++
	cmd := pdu.SCSICommand{Final: true, Read: read, Write: out != nil, ITT: itt, ExpectedDataTransferLength: edtl,
		CmdSN: in.cmdSN, ExpStatSN: in.statSN}
	in.cmdSN++
	copy(cmd.CDB[:], cdb)
	imm := out[:min(immediate, len(out))]
	if err := in.send(&cmd, imm); err != nil {
		return pdu.Header{}, nil, err
	}
	var got []byte
	for {
		h, data, err := in.recv()
		if err != nil {
			return h, got, err
		}
		switch h.Opcode() {
		case pdu.OpR2T:
			var r pdu.R2T
			r.Unmarshal(&h)
			end := min(int(r.BufferOffset+r.DesiredLength), len(out))
			if err := in.send(&pdu.DataOut{Final: true, ITT: itt, TTT: r.TTT, BufferOffset: r.BufferOffset},
				out[r.BufferOffset:end]); err != nil {
				return h, got, err
			}
		case pdu.OpDataIn:
			got = append(got, data...)
			var d pdu.DataIn
			d.Unmarshal(&h)
			if d.StatusPresent {
				in.statSN = d.StatSN + 1
				return h, got, nil
			}
		case pdu.OpSCSIResponse:
			var r pdu.SCSIResponse
			r.Unmarshal(&h)
			in.statSN = r.StatSN + 1
			return h, append(got, data...), nil
		case pdu.OpNOPIn, pdu.OpAsyncMsg:
		default:
			return h, got, fmt.Errorf("unexpected %v", h.Opcode())
		}
	}
}

func (in *initiator) close() { in.nc.Close() }

var _ = io.EOF

// A large read goes from the device to the socket (sendfile); when the
// device fails partway, the initiator gets the data sent so far, the
// segment completed, and CHECK CONDITION / MEDIUM ERROR — never GOOD, and
// the connection goes on. With the status in the last Data-In (as before),
// GOOD would have gone out before the data was read.
func TestSendFromDeviceReportsAMediumError(t *testing.T) {
	ts := startServer(t, Auth{}, Config{})
	in := dial(t, ts.addr)
	defer in.close()
	in.mustLogin("MaxRecvDataSegmentLength=65536")
	for i := range ts.dev.data[:1<<20] {
		ts.dev.data[i] = byte(i / 512)
	}
	read10 := []byte{0x28, 0, 0, 0, 0, 0, 0, 0x08, 0, 0} // 2048 blocks: 1 MiB
	h, got, err := in.command(read10, 1<<20, true, nil, 0)
	if err != nil || h.Opcode() != pdu.OpSCSIResponse || len(got) != 1<<20 || got[600] != 1 {
		t.Fatalf("healthy 1 MiB read: %v, opcode %v, %d bytes", err, h.Opcode(), len(got))
	}
	var r pdu.SCSIResponse
	if r.Unmarshal(&h); r.Status != 0 {
		t.Fatalf("healthy read: status %#x", r.Status)
	}
	ts.dev.failSendAt.Store(300<<10 + 100)
	h, got, err = in.command(read10, 1<<20, true, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if h.Opcode() != pdu.OpSCSIResponse {
		t.Fatalf("failed read answered with %v", h.Opcode())
	}
	r = pdu.SCSIResponse{}
	r.Unmarshal(&h)
	sense := got[len(got)-20:] // the response's data: length, then sense
	if r.Status != 0x02 || sense[2+2]&0x0f != 0x03 || sense[2+12] != 0x11 {
		t.Fatalf("failed read: status %#x sense % x, want CHECK CONDITION MEDIUM ERROR 11h", r.Status, sense)
	}
	if !bytes.Equal(got[:300<<10], ts.dev.data[:300<<10]) {
		t.Fatal("the data sent before the failure is wrong")
	}
	ts.dev.failSendAt.Store(0)
	if _, got, err := in.command(read10, 1<<20, true, nil, 0); err != nil || len(got) != 1<<20 {
		t.Fatalf("the connection after a failed read: %v, %d bytes", err, len(got))
	}
}
