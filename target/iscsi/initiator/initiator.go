// Package initiator is a minimal iSCSI initiator: one session of one
// connection, one command at a time, no authentication. It exists for
// Tandem's end-to-end tests and tools that must send SCSI commands
// libiscsi's utilities do not (PERSISTENT RESERVE, COMPARE AND WRITE) from
// chosen initiator names, to a real node over a real socket.
package initiator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"tandem.io/tandem/target/iscsi/login"
	"tandem.io/tandem/target/iscsi/pdu"
)

// Config says where to log in and as whom.
type Config struct {
	Addr   string // portal, host:port
	Target string // target name
	// Name is the initiator name; ISID with it names the I_T nexus.
	Name string
	ISID [6]byte
	// Timeout bounds every exchange (default 20s).
	Timeout time.Duration
}

// Session is a logged-in session. Not safe for concurrent use.
type Session struct {
	cfg    Config
	nc     net.Conn
	r      pdu.Reader
	w      pdu.Writer
	itt    uint32
	cmdSN  uint32
	statSN uint32
	burst  int // first burst: how much data may go as immediate data
}

// Response is a command's outcome.
type Response struct {
	Status byte
	Sense  []byte // fixed or descriptor format sense data, if any
	Data   []byte // Data-In
}

// SenseKey returns the sense key and ASC/ASCQ (0xAAQQ) of fixed-format
// sense data, zeros if there is none.
func (r Response) SenseKey() (key byte, asc uint16) {
	if len(r.Sense) < 14 {
		return 0, 0
	}
	return r.Sense[2] & 0x0f, uint16(r.Sense[12])<<8 | uint16(r.Sense[13])
}

// Dial connects and logs in (operational negotiation only, no security
// stage). A login redirected (Target Moved) is followed, up to 4 times,
// to the address the target gave; Portal then says where the session is.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 20 * time.Second
	}
	for hop := 0; ; hop++ {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("initiator: dial %s: %w", cfg.Addr, err)
		}
		s := &Session{cfg: cfg, nc: nc, r: pdu.Reader{R: bufio.NewReader(nc), MaxDataSegmentLength: 262144},
			w: pdu.Writer{Dst: nc}, itt: 1, cmdSN: 1, burst: 8192}
		err = s.login()
		if err == nil {
			return s, nil
		}
		nc.Close()
		var moved *MovedError
		if !errors.As(err, &moved) || hop == 4 {
			return nil, err
		}
		cfg.Addr = moved.Addr
	}
}

// Portal is the address the session is logged in through.
func (s *Session) Portal() string { return s.cfg.Addr }

// MovedError is a login redirected to another portal.
type MovedError struct{ Addr string }

func (e *MovedError) Error() string { return "initiator: target moved to " + e.Addr }

func (s *Session) deadline() { s.nc.SetDeadline(time.Now().Add(s.cfg.Timeout)) }

func (s *Session) send(m interface{ Marshal(*pdu.Header) }, data []byte) error {
	var h pdu.Header
	m.Marshal(&h)
	if err := s.w.WritePDU(&h, data); err != nil {
		return err
	}
	return s.w.Flush()
}

func (s *Session) recv() (pdu.Header, []byte, error) {
	var h pdu.Header
	if _, err := s.r.ReadHeader(&h); err != nil {
		return h, nil, err
	}
	data := make([]byte, h.DataSegmentLength())
	err := s.r.ReadData(&h, data)
	return h, data, err
}

func (s *Session) login() error {
	s.deadline()
	kv := []string{"InitiatorName=" + s.cfg.Name, "SessionType=Normal", "TargetName=" + s.cfg.Target,
		"HeaderDigest=None", "DataDigest=None", "MaxRecvDataSegmentLength=262144",
		"ImmediateData=Yes", "InitialR2T=Yes", "FirstBurstLength=65536", "MaxBurstLength=262144"}
	text := []byte(strings.Join(kv, "\x00") + "\x00")
	req := pdu.LoginRequest{Transit: true, CSG: 1, NSG: 3, ISID: s.cfg.ISID, ITT: s.itt, CmdSN: s.cmdSN}
	if err := s.send(&req, text); err != nil {
		return fmt.Errorf("initiator: login: %w", err)
	}
	h, data, err := s.recv()
	if err != nil {
		return fmt.Errorf("initiator: login: %w", err)
	}
	var resp pdu.LoginResponse
	if err := resp.Unmarshal(&h); err != nil {
		return fmt.Errorf("initiator: login: %w", err)
	}
	if resp.StatusClass == 1 {
		pairs, _ := login.ParseText(data)
		for _, p := range pairs {
			if p.Key == "TargetAddress" {
				addr, _, _ := strings.Cut(p.Value, ",")
				return &MovedError{Addr: addr}
			}
		}
	}
	if resp.StatusClass != 0 || !resp.Transit || resp.NSG != 3 {
		return fmt.Errorf("initiator: login to %s refused: status %d/%d", s.cfg.Target, resp.StatusClass, resp.StatusDetail)
	}
	pairs, err := login.ParseText(data)
	if err != nil {
		return fmt.Errorf("initiator: login: %w", err)
	}
	mrdsl := 8192
	for _, p := range pairs {
		if p.Key == "MaxRecvDataSegmentLength" {
			fmt.Sscan(p.Value, &mrdsl)
		}
	}
	s.burst = min(mrdsl, 65536)
	s.statSN = resp.StatSN + 1
	s.itt++
	return nil
}

// Do runs one SCSI command on LUN 0: out is the Data-Out (nil for none),
// readLen the expected Data-In length.
func (s *Session) Do(cdb []byte, out []byte, readLen uint32) (Response, error) {
	if len(cdb) == 0 || len(cdb) > 16 {
		return Response{}, fmt.Errorf("initiator: CDB of %d bytes (1 to 16)", len(cdb))
	}
	s.deadline()
	itt := s.itt
	s.itt++
	edtl := readLen
	if out != nil {
		edtl = uint32(len(out))
	}
	cmd := pdu.SCSICommand{Final: true, Read: readLen > 0, Write: out != nil, ITT: itt, ExpectedDataTransferLength: edtl,
		CmdSN: s.cmdSN, ExpStatSN: s.statSN}
	s.cmdSN++
	copy(cmd.CDB[:], cdb)
	if err := s.send(&cmd, out[:min(len(out), s.burst)]); err != nil {
		return Response{}, fmt.Errorf("initiator: command: %w", err)
	}
	var res Response
	for {
		h, data, err := s.recv()
		if err != nil {
			return res, fmt.Errorf("initiator: command 0x%02x: %w", cdb[0], err)
		}
		switch h.Opcode() {
		case pdu.OpR2T:
			var r pdu.R2T
			r.Unmarshal(&h)
			end := min(int(r.BufferOffset+r.DesiredLength), len(out))
			for off, sn := int(r.BufferOffset), uint32(0); off < end; sn++ {
				n := min(end-off, s.burst)
				d := pdu.DataOut{Final: off+n == end, ITT: itt, TTT: r.TTT, BufferOffset: uint32(off), DataSN: sn}
				if err := s.send(&d, out[off:off+n]); err != nil {
					return res, fmt.Errorf("initiator: data-out: %w", err)
				}
				off += n
			}
		case pdu.OpDataIn:
			res.Data = append(res.Data, data...)
			var d pdu.DataIn
			d.Unmarshal(&h)
			if d.StatusPresent {
				s.statSN = d.StatSN + 1
				res.Status = d.Status
				return res, nil
			}
		case pdu.OpSCSIResponse:
			var r pdu.SCSIResponse
			r.Unmarshal(&h)
			s.statSN = r.StatSN + 1
			res.Status = r.Status
			if len(data) >= 2 {
				n := int(data[0])<<8 | int(data[1])
				res.Sense = data[2:min(len(data), 2+n)]
			}
			return res, nil
		case pdu.OpNOPIn:
			var n pdu.NOPIn
			n.Unmarshal(&h)
			if n.TTT != 0xffffffff { // a ping from the target: answer it
				if err := s.send(&pdu.NOPOut{Immediate: true, ITT: 0xffffffff, TTT: n.TTT, CmdSN: s.cmdSN, ExpStatSN: s.statSN}, nil); err != nil {
					return res, err
				}
			}
		case pdu.OpAsyncMsg:
		default:
			return res, fmt.Errorf("initiator: unexpected %v during command 0x%02x", h.Opcode(), cdb[0])
		}
	}
}

// Raw hands the session's connection over to PDU-level use, for tests of
// initiators that do not play by the rules (floods, ignoring MaxCmdSN, not
// reading). Deadlines are cleared. After Raw, the caller keeps CmdSN and
// StatSN; Do and Close must not be used.
func (s *Session) Raw() *Raw {
	s.nc.SetDeadline(time.Time{})
	return &Raw{s: s}
}

// Raw is a logged-in connection used PDU by PDU. Write and Flush may run
// in one goroutine while Read runs in another.
type Raw struct{ s *Session }

// CmdSN and StatSN are the sequence numbers the session was at when Raw
// was called: the CmdSN of the next command, the next StatSN expected.
func (r *Raw) CmdSN() uint32  { return r.s.cmdSN }
func (r *Raw) StatSN() uint32 { return r.s.statSN }

// Write buffers one PDU built by m, with data; Flush sends what is
// buffered. A write blocks while the target does not read.
func (r *Raw) Write(m interface{ Marshal(*pdu.Header) }, data []byte) error {
	var h pdu.Header
	m.Marshal(&h)
	return r.s.w.WritePDU(&h, data)
}

// Flush sends the buffered PDUs.
func (r *Raw) Flush() error { return r.s.w.Flush() }

// Read reads the next PDU from the target.
func (r *Raw) Read() (pdu.Header, []byte, error) { return r.s.recv() }

// Close closes the connection without logging out, as a crashed initiator
// would; it unblocks a Write or Read in progress.
func (r *Raw) Close() error { return r.s.nc.Close() }

// Close logs out and closes the connection.
func (s *Session) Close() error {
	s.deadline()
	req := pdu.LogoutRequest{Immediate: true, ITT: s.itt, CmdSN: s.cmdSN, ExpStatSN: s.statSN}
	if err := s.send(&req, nil); err == nil {
		s.recv()
	}
	return s.nc.Close()
}
