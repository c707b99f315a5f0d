package pdu

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

type message interface {
	Marshal(h *Header)
	Unmarshal(h *Header) error
}

func TestRoundTrip(t *testing.T) {
	cdb := [16]byte{0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0}
	tests := []struct {
		name string
		in   message
		out  message
		op   Opcode
	}{
		{"1 scsi command", &SCSICommand{Immediate: true, Final: true, Read: true, Attr: 1, LUN: 1 << 48, ITT: 7, ExpectedDataTransferLength: 512, CmdSN: 9, ExpStatSN: 3, CDB: cdb}, &SCSICommand{}, OpSCSICommand},
		{"2 scsi response", &SCSIResponse{Underflow: true, Status: 2, ITT: 7, StatSN: 4, ExpCmdSN: 10, MaxCmdSN: 40, ExpDataSN: 1, Residual: 100}, &SCSIResponse{}, OpSCSIResponse},
		{"3 tmf request", &TaskMgmtRequest{Immediate: true, Function: TMFAbortTask, LUN: 1, ITT: 8, ReferencedTaskTag: 7, CmdSN: 11, ExpStatSN: 5, RefCmdSN: 9, ExpDataSN: 2}, &TaskMgmtRequest{}, OpTaskMgmtReq},
		{"4 tmf response", &TaskMgmtResponse{Response: TMFTaskDoesNotExist, ITT: 8, StatSN: 5, ExpCmdSN: 12, MaxCmdSN: 42}, &TaskMgmtResponse{}, OpTaskMgmtResp},
		{"5 data-out", &DataOut{Final: true, LUN: 2, ITT: 9, TTT: 3, ExpStatSN: 6, DataSN: 1, BufferOffset: 8192}, &DataOut{}, OpDataOut},
		{"6 data-in", &DataIn{Final: true, StatusPresent: true, Underflow: true, Status: 0, LUN: 2, ITT: 9, TTT: 0xffffffff, StatSN: 6, ExpCmdSN: 7, MaxCmdSN: 8, DataSN: 2, BufferOffset: 4096, Residual: 12}, &DataIn{}, OpDataIn},
		{"7 r2t", &R2T{LUN: 3, ITT: 1, TTT: 2, StatSN: 3, ExpCmdSN: 4, MaxCmdSN: 5, R2TSN: 6, BufferOffset: 7, DesiredLength: 8}, &R2T{}, OpR2T},
		{"8 async", &AsyncMessage{LUN: 1, StatSN: 2, ExpCmdSN: 3, MaxCmdSN: 4, Event: AsyncLogoutRequest, VCode: 1, Parameter1: 5, Parameter2: 6, Parameter3: 7}, &AsyncMessage{}, OpAsyncMsg},
		{"9 text request", &TextRequest{Immediate: true, Final: true, Continue: false, ITT: 4, TTT: 0xffffffff, CmdSN: 1, ExpStatSN: 2}, &TextRequest{}, OpTextReq},
		{"10 text response", &TextResponse{Continue: true, ITT: 4, TTT: 9, StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3}, &TextResponse{}, OpTextResp},
		{"11 login request", &LoginRequest{Transit: true, CSG: 1, NSG: 3, ISID: [6]byte{0x80, 1, 2, 3, 4, 5}, TSIH: 0, ITT: 1, CID: 2, CmdSN: 3, ExpStatSN: 4}, &LoginRequest{}, OpLoginReq},
		{"12 login response", &LoginResponse{Transit: true, CSG: 1, NSG: 3, ISID: [6]byte{1}, TSIH: 5, ITT: 1, StatSN: 2, ExpCmdSN: 3, MaxCmdSN: 4, StatusClass: 2, StatusDetail: 1}, &LoginResponse{}, OpLoginResp},
		{"13 logout request", &LogoutRequest{Immediate: true, Reason: LogoutCloseConnection, ITT: 5, CID: 1, CmdSN: 6, ExpStatSN: 7}, &LogoutRequest{}, OpLogoutReq},
		{"14 logout response", &LogoutResponse{Response: LogoutSuccess, ITT: 5, StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3, Time2Wait: 2, Time2Retain: 20}, &LogoutResponse{}, OpLogoutResp},
		{"15 snack", &SNACKRequest{Type: 1, LUN: 1, ITT: 2, TTT: 3, ExpStatSN: 4, BegRun: 5, RunLength: 6}, &SNACKRequest{}, OpSNACKReq},
		{"16 reject", &Reject{Reason: RejectProtocolError, StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3, DataSN: 4}, &Reject{}, OpReject},
		{"17 nop-out", &NOPOut{Immediate: true, LUN: 1, ITT: 2, TTT: 0xffffffff, CmdSN: 3, ExpStatSN: 4}, &NOPOut{}, OpNOPOut},
		{"18 nop-in", &NOPIn{LUN: 1, ITT: 0xffffffff, TTT: 5, StatSN: 6, ExpCmdSN: 7, MaxCmdSN: 8}, &NOPIn{}, OpNOPIn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Header
			tc.in.Marshal(&h)
			if h.Opcode() != tc.op {
				t.Fatalf("opcode %v, want %v", h.Opcode(), tc.op)
			}
			if err := tc.out.Unmarshal(&h); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(tc.in, tc.out) {
				t.Fatalf("round trip:\n in %+v\nout %+v", tc.in, tc.out)
			}
			var other NOPIn
			if tc.op != OpNOPIn {
				var w ErrWrongOpcode
				if err := other.Unmarshal(&h); !errors.As(err, &w) {
					t.Fatalf("wrong opcode accepted: %v", err)
				}
			}
		})
	}
}

func TestCRC32CKnownVector(t *testing.T) {
	// RFC 3720 B.4: 32 bytes of zeros.
	if got := CRC32C(make([]byte, 32)); got != 0x8a9136aa {
		t.Fatalf("crc32c = %08x", got)
	}
}

func writePDU(t testing.TB, hd, dd bool, h *Header, ahs, data []byte) []byte {
	var buf bytes.Buffer
	w := Writer{Dst: &buf, HeaderDigest: hd, DataDigest: dd}
	if err := w.WritePDUWithAHS(h, ahs, data); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestReadWrite(t *testing.T) {
	ext := []byte{0, 17, AHSExtendedCDB, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	tests := []struct {
		name    string
		hd, dd  bool
		ahs     []byte
		data    []byte
		corrupt int // byte index to flip, -1 none
		wantErr error
	}{
		{"1 plain no data", false, false, nil, nil, -1, nil},
		{"2 plain data padded", false, false, nil, []byte("abcde"), -1, nil},
		{"3 digests", true, true, nil, []byte("hello world!"), -1, nil},
		{"4 header digest bad", true, false, nil, []byte("x"), 3, ErrHeaderDigest},
		{"5 data digest bad", false, true, nil, []byte("abcdefgh"), BHSLen + 2, ErrDataDigest},
		{"6 ahs with digests", true, true, ext, []byte("z"), -1, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Header
			(&SCSICommand{Final: true, Write: true, ITT: 1, ExpectedDataTransferLength: uint32(len(tc.data))}).Marshal(&h)
			raw := writePDU(t, tc.hd, tc.dd, &h, tc.ahs, tc.data)
			if len(raw)%4 != 0 {
				t.Fatalf("length %d not padded", len(raw))
			}
			if tc.corrupt >= 0 {
				raw[tc.corrupt] ^= 0x40
			}
			r := Reader{R: bytes.NewReader(raw), HeaderDigest: tc.hd, DataDigest: tc.dd}
			var got Header
			ahs, err := r.ReadHeader(&got)
			if err == nil {
				if !bytes.Equal(ahs, tc.ahs) {
					t.Fatalf("ahs %x want %x", ahs, tc.ahs)
				}
				data := make([]byte, got.DataSegmentLength())
				err = r.ReadData(&got, data)
				if err == nil && !bytes.Equal(data, tc.data) {
					t.Fatalf("data %q want %q", data, tc.data)
				}
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err == nil {
				if _, err := r.ReadHeader(&got); err != io.EOF {
					t.Fatalf("trailing bytes: %v", err)
				}
			}
		})
	}
}

func TestDataTooLong(t *testing.T) {
	var h Header
	(&NOPOut{ITT: 1}).Marshal(&h)
	raw := writePDU(t, false, false, &h, nil, make([]byte, 9000))
	r := Reader{R: bytes.NewReader(raw)}
	if _, err := r.ReadHeader(&h); !errors.Is(err, ErrDataTooLong) {
		t.Fatalf("err %v", err)
	}
}

func TestParseAHS(t *testing.T) {
	tests := []struct {
		name  string
		in    []byte
		types []uint8
		ok    bool
	}{
		{"1 empty", nil, nil, true},
		{"2 ext cdb 16+4", append([]byte{0, 5, 1, 0}, 1, 2, 3, 4), []uint8{1}, true},
		{"3 bidi", []byte{0, 5, 2, 0, 0, 0, 16, 0}, []uint8{2}, true},
		{"4 two", []byte{0, 5, 2, 0, 0, 0, 16, 0, 0, 1, 1, 0}, []uint8{2, 1}, true},
		{"5 short", []byte{0, 5, 2}, nil, false},
		{"6 overlong", []byte{0, 50, 2, 0, 0, 0, 0, 0}, nil, false},
		{"7 zero length", []byte{0, 0, 2, 0}, nil, false},
	}
	for _, tc := range tests {
		got, err := ParseAHS(tc.in)
		if (err == nil) != tc.ok {
			t.Fatalf("%s: err %v", tc.name, err)
		}
		for i, a := range got {
			if a.Type != tc.types[i] {
				t.Fatalf("%s: type %d", tc.name, a.Type)
			}
		}
	}
}

// FuzzRead feeds arbitrary bytes to the reader and every message decoder; it
// must never panic, and whatever decodes must re-encode to the same fields.
func FuzzRead(f *testing.F) {
	var h Header
	(&SCSICommand{Final: true, Write: true, ITT: 1, CDB: [16]byte{0x2a}}).Marshal(&h)
	f.Add(writePDU(f, false, false, &h, nil, []byte("data")), false, false)
	f.Add(writePDU(f, true, true, &h, []byte{0, 5, 1, 0, 1, 2, 3, 4}, []byte("data")), true, true)
	(&LoginRequest{Transit: true, CSG: 1, NSG: 3}).Marshal(&h)
	f.Add(writePDU(f, false, false, &h, nil, []byte("InitiatorName=iqn.x\x00")), false, false)
	f.Fuzz(func(t *testing.T, raw []byte, hd, dd bool) {
		r := Reader{R: bytes.NewReader(raw), HeaderDigest: hd, DataDigest: dd, MaxDataSegmentLength: 65536}
		for i := 0; i < 8; i++ {
			var h Header
			ahs, err := r.ReadHeader(&h)
			if err != nil {
				return
			}
			ParseAHS(ahs)
			data := make([]byte, h.DataSegmentLength())
			if err := r.ReadData(&h, data); err != nil && !errors.Is(err, ErrDataDigest) {
				return
			}
			for _, m := range []message{&SCSICommand{}, &SCSIResponse{}, &TaskMgmtRequest{}, &TaskMgmtResponse{},
				&DataOut{}, &DataIn{}, &R2T{}, &AsyncMessage{}, &TextRequest{}, &TextResponse{}, &LoginRequest{},
				&LoginResponse{}, &LogoutRequest{}, &LogoutResponse{}, &SNACKRequest{}, &Reject{}, &NOPOut{}, &NOPIn{}} {
				if m.Unmarshal(&h) != nil {
					continue
				}
				var h2 Header
				m.Marshal(&h2)
				again := reflect.New(reflect.TypeOf(m).Elem()).Interface().(message)
				if err := again.Unmarshal(&h2); err != nil || !reflect.DeepEqual(m, again) {
					t.Fatalf("re-encode of %T differs: %+v vs %+v", m, m, again)
				}
			}
		}
	})
}

func BenchmarkWriteDataIn(b *testing.B) {
	data := make([]byte, 4096)
	w := Writer{Dst: io.Discard}
	var h Header
	b.ReportAllocs()
	b.SetBytes(4096)
	for i := 0; i < b.N; i++ {
		(&DataIn{Final: true, StatusPresent: true, ITT: uint32(i)}).Marshal(&h)
		w.WritePDU(&h, data)
	}
}
