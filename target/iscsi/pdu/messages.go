package pdu

import "fmt"

// ErrWrongOpcode wraps the opcode found when a message type is unmarshalled
// from a header of another opcode.
type ErrWrongOpcode struct{ Want, Got Opcode }

func (e ErrWrongOpcode) Error() string {
	return fmt.Sprintf("pdu: want %v, got %v", e.Want, e.Got)
}

func check(h *Header, op Opcode) error {
	if got := h.Opcode(); got != op {
		return ErrWrongOpcode{op, got}
	}
	return nil
}

// SCSICommand is a SCSI Command PDU (RFC 7143 §11.3).
type SCSICommand struct {
	Immediate, Final, Read, Write bool
	Attr                          uint8 // task attribute, 3 bits
	LUN                           uint64
	ITT                           uint32
	ExpectedDataTransferLength    uint32
	CmdSN, ExpStatSN              uint32
	CDB                           [16]byte
}

func (m *SCSICommand) Unmarshal(h *Header) error {
	if err := check(h, OpSCSICommand); err != nil {
		return err
	}
	*m = SCSICommand{
		Immediate: h.Immediate(), Final: bit(h[1], 0x80), Read: bit(h[1], 0x40), Write: bit(h[1], 0x20),
		Attr: h[1] & 7, LUN: be64(h[8:]), ITT: be32(h[16:]), ExpectedDataTransferLength: be32(h[20:]),
		CmdSN: be32(h[24:]), ExpStatSN: be32(h[28:]),
	}
	copy(m.CDB[:], h[32:48])
	return nil
}

func (m *SCSICommand) Marshal(h *Header) {
	h.start(OpSCSICommand, m.Immediate)
	h[1] = setIf(m.Final, 0x80) | setIf(m.Read, 0x40) | setIf(m.Write, 0x20) | m.Attr&7
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.ExpectedDataTransferLength)
	put32(h[24:], m.CmdSN)
	put32(h[28:], m.ExpStatSN)
	copy(h[32:], m.CDB[:])
}

// SCSIResponse is a SCSI Response PDU (§11.4). Its data segment carries the
// sense data, prefixed by a two-byte length.
type SCSIResponse struct {
	BidiOverflow, BidiUnderflow, Overflow, Underflow bool
	Response, Status                                 uint8
	ITT, SNACKTag                                    uint32
	StatSN, ExpCmdSN, MaxCmdSN, ExpDataSN            uint32
	BidiResidual, Residual                           uint32
}

func (m *SCSIResponse) Unmarshal(h *Header) error {
	if err := check(h, OpSCSIResponse); err != nil {
		return err
	}
	*m = SCSIResponse{
		BidiOverflow: bit(h[1], 0x10), BidiUnderflow: bit(h[1], 0x08), Overflow: bit(h[1], 0x04), Underflow: bit(h[1], 0x02),
		Response: h[2], Status: h[3], ITT: be32(h[16:]), SNACKTag: be32(h[20:]), StatSN: be32(h[24:]),
		ExpCmdSN: be32(h[28:]), MaxCmdSN: be32(h[32:]), ExpDataSN: be32(h[36:]), BidiResidual: be32(h[40:]), Residual: be32(h[44:]),
	}
	return nil
}

func (m *SCSIResponse) Marshal(h *Header) {
	h.start(OpSCSIResponse, false)
	h[1] = 0x80 | setIf(m.BidiOverflow, 0x10) | setIf(m.BidiUnderflow, 0x08) | setIf(m.Overflow, 0x04) | setIf(m.Underflow, 0x02)
	h[2], h[3] = m.Response, m.Status
	put32(h[16:], m.ITT)
	put32(h[20:], m.SNACKTag)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
	put32(h[36:], m.ExpDataSN)
	put32(h[40:], m.BidiResidual)
	put32(h[44:], m.Residual)
}

// Task management functions (§11.5.1).
const (
	TMFAbortTask        = 1
	TMFAbortTaskSet     = 2
	TMFClearACA         = 3
	TMFClearTaskSet     = 4
	TMFLogicalUnitReset = 5
	TMFTargetWarmReset  = 6
	TMFTargetColdReset  = 7
	TMFTaskReassign     = 8
)

// Task management responses (§11.6.1).
const (
	TMFComplete             = 0
	TMFTaskDoesNotExist     = 1
	TMFLUNDoesNotExist      = 2
	TMFTaskStillAllegiant   = 3
	TMFReassignNotSupported = 4
	TMFNotSupported         = 5
	TMFAuthorizationFailed  = 6
	TMFRejected             = 255
)

// TaskMgmtRequest is a Task Management Function Request (§11.5).
type TaskMgmtRequest struct {
	Immediate                  bool
	Function                   uint8
	LUN                        uint64
	ITT, ReferencedTaskTag     uint32
	CmdSN, ExpStatSN, RefCmdSN uint32
	ExpDataSN                  uint32
}

func (m *TaskMgmtRequest) Unmarshal(h *Header) error {
	if err := check(h, OpTaskMgmtReq); err != nil {
		return err
	}
	*m = TaskMgmtRequest{
		Immediate: h.Immediate(), Function: h[1] & 0x7f, LUN: be64(h[8:]), ITT: be32(h[16:]),
		ReferencedTaskTag: be32(h[20:]), CmdSN: be32(h[24:]), ExpStatSN: be32(h[28:]),
		RefCmdSN: be32(h[32:]), ExpDataSN: be32(h[36:]),
	}
	return nil
}

func (m *TaskMgmtRequest) Marshal(h *Header) {
	h.start(OpTaskMgmtReq, m.Immediate)
	h[1] = 0x80 | m.Function&0x7f
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.ReferencedTaskTag)
	put32(h[24:], m.CmdSN)
	put32(h[28:], m.ExpStatSN)
	put32(h[32:], m.RefCmdSN)
	put32(h[36:], m.ExpDataSN)
}

// TaskMgmtResponse is a Task Management Function Response (§11.6).
type TaskMgmtResponse struct {
	Response                        uint8
	ITT, StatSN, ExpCmdSN, MaxCmdSN uint32
}

func (m *TaskMgmtResponse) Unmarshal(h *Header) error {
	if err := check(h, OpTaskMgmtResp); err != nil {
		return err
	}
	*m = TaskMgmtResponse{Response: h[2], ITT: be32(h[16:]), StatSN: be32(h[24:]), ExpCmdSN: be32(h[28:]), MaxCmdSN: be32(h[32:])}
	return nil
}

func (m *TaskMgmtResponse) Marshal(h *Header) {
	h.start(OpTaskMgmtResp, false)
	h[1] = 0x80
	h[2] = m.Response
	put32(h[16:], m.ITT)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
}

// DataOut is a SCSI Data-Out PDU (§11.7).
type DataOut struct {
	Final                       bool
	LUN                         uint64
	ITT, TTT, ExpStatSN, DataSN uint32
	BufferOffset                uint32
}

func (m *DataOut) Unmarshal(h *Header) error {
	if err := check(h, OpDataOut); err != nil {
		return err
	}
	*m = DataOut{Final: bit(h[1], 0x80), LUN: be64(h[8:]), ITT: be32(h[16:]), TTT: be32(h[20:]),
		ExpStatSN: be32(h[28:]), DataSN: be32(h[36:]), BufferOffset: be32(h[40:])}
	return nil
}

func (m *DataOut) Marshal(h *Header) {
	h.start(OpDataOut, false)
	h[1] = setIf(m.Final, 0x80)
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.TTT)
	put32(h[28:], m.ExpStatSN)
	put32(h[36:], m.DataSN)
	put32(h[40:], m.BufferOffset)
}

// DataIn is a SCSI Data-In PDU (§11.7). With StatusPresent it also completes
// the command (phase collapse).
type DataIn struct {
	Final, Acknowledge, Overflow, Underflow, StatusPresent bool
	Status                                                 uint8
	LUN                                                    uint64
	ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN, DataSN           uint32
	BufferOffset, Residual                                 uint32
}

func (m *DataIn) Unmarshal(h *Header) error {
	if err := check(h, OpDataIn); err != nil {
		return err
	}
	*m = DataIn{Final: bit(h[1], 0x80), Acknowledge: bit(h[1], 0x40), Overflow: bit(h[1], 0x04),
		Underflow: bit(h[1], 0x02), StatusPresent: bit(h[1], 0x01), Status: h[3], LUN: be64(h[8:]),
		ITT: be32(h[16:]), TTT: be32(h[20:]), StatSN: be32(h[24:]), ExpCmdSN: be32(h[28:]),
		MaxCmdSN: be32(h[32:]), DataSN: be32(h[36:]), BufferOffset: be32(h[40:]), Residual: be32(h[44:])}
	return nil
}

func (m *DataIn) Marshal(h *Header) {
	h.start(OpDataIn, false)
	h[1] = setIf(m.Final, 0x80) | setIf(m.Acknowledge, 0x40) | setIf(m.Overflow, 0x04) |
		setIf(m.Underflow, 0x02) | setIf(m.StatusPresent, 0x01)
	h[3] = m.Status
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.TTT)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
	put32(h[36:], m.DataSN)
	put32(h[40:], m.BufferOffset)
	put32(h[44:], m.Residual)
}

// R2T is a Ready To Transfer PDU (§11.8).
type R2T struct {
	LUN                                  uint64
	ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN uint32
	R2TSN, BufferOffset, DesiredLength   uint32
}

func (m *R2T) Unmarshal(h *Header) error {
	if err := check(h, OpR2T); err != nil {
		return err
	}
	*m = R2T{LUN: be64(h[8:]), ITT: be32(h[16:]), TTT: be32(h[20:]), StatSN: be32(h[24:]),
		ExpCmdSN: be32(h[28:]), MaxCmdSN: be32(h[32:]), R2TSN: be32(h[36:]),
		BufferOffset: be32(h[40:]), DesiredLength: be32(h[44:])}
	return nil
}

func (m *R2T) Marshal(h *Header) {
	h.start(OpR2T, false)
	h[1] = 0x80
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.TTT)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
	put32(h[36:], m.R2TSN)
	put32(h[40:], m.BufferOffset)
	put32(h[44:], m.DesiredLength)
}

// Asynchronous events (§11.9.1).
const (
	AsyncSCSIEvent      = 0
	AsyncLogoutRequest  = 1
	AsyncDropConnection = 2
	AsyncDropSession    = 3
	AsyncRenegotiate    = 4
	AsyncVendor         = 255
)

// AsyncMessage is an Asynchronous Message PDU (§11.9).
type AsyncMessage struct {
	LUN                                uint64
	StatSN, ExpCmdSN, MaxCmdSN         uint32
	Event, VCode                       uint8
	Parameter1, Parameter2, Parameter3 uint16
}

func (m *AsyncMessage) Unmarshal(h *Header) error {
	if err := check(h, OpAsyncMsg); err != nil {
		return err
	}
	*m = AsyncMessage{LUN: be64(h[8:]), StatSN: be32(h[24:]), ExpCmdSN: be32(h[28:]), MaxCmdSN: be32(h[32:]),
		Event: h[36], VCode: h[37], Parameter1: be16(h[38:]), Parameter2: be16(h[40:]), Parameter3: be16(h[42:])}
	return nil
}

func (m *AsyncMessage) Marshal(h *Header) {
	h.start(OpAsyncMsg, false)
	h[1] = 0x80
	put64(h[8:], m.LUN)
	put32(h[16:], 0xffffffff)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
	h[36], h[37] = m.Event, m.VCode
	put16(h[38:], m.Parameter1)
	put16(h[40:], m.Parameter2)
	put16(h[42:], m.Parameter3)
}

// TextRequest is a Text Request PDU (§11.10).
type TextRequest struct {
	Immediate, Final, Continue bool
	LUN                        uint64
	ITT, TTT, CmdSN, ExpStatSN uint32
}

func (m *TextRequest) Unmarshal(h *Header) error {
	if err := check(h, OpTextReq); err != nil {
		return err
	}
	*m = TextRequest{Immediate: h.Immediate(), Final: bit(h[1], 0x80), Continue: bit(h[1], 0x40),
		LUN: be64(h[8:]), ITT: be32(h[16:]), TTT: be32(h[20:]), CmdSN: be32(h[24:]), ExpStatSN: be32(h[28:])}
	return nil
}

func (m *TextRequest) Marshal(h *Header) {
	h.start(OpTextReq, m.Immediate)
	h[1] = setIf(m.Final, 0x80) | setIf(m.Continue, 0x40)
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.TTT)
	put32(h[24:], m.CmdSN)
	put32(h[28:], m.ExpStatSN)
}

// TextResponse is a Text Response PDU (§11.11).
type TextResponse struct {
	Final, Continue                      bool
	LUN                                  uint64
	ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN uint32
}

func (m *TextResponse) Unmarshal(h *Header) error {
	if err := check(h, OpTextResp); err != nil {
		return err
	}
	*m = TextResponse{Final: bit(h[1], 0x80), Continue: bit(h[1], 0x40), LUN: be64(h[8:]), ITT: be32(h[16:]),
		TTT: be32(h[20:]), StatSN: be32(h[24:]), ExpCmdSN: be32(h[28:]), MaxCmdSN: be32(h[32:])}
	return nil
}

func (m *TextResponse) Marshal(h *Header) {
	h.start(OpTextResp, false)
	h[1] = setIf(m.Final, 0x80) | setIf(m.Continue, 0x40)
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.TTT)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
}

// LoginRequest is a Login Request PDU (§11.12).
type LoginRequest struct {
	Transit, Continue      bool
	CSG, NSG               uint8
	VersionMax, VersionMin uint8
	ISID                   [6]byte
	TSIH                   uint16
	ITT                    uint32
	CID                    uint16
	CmdSN, ExpStatSN       uint32
}

func (m *LoginRequest) Unmarshal(h *Header) error {
	if err := check(h, OpLoginReq); err != nil {
		return err
	}
	*m = LoginRequest{Transit: bit(h[1], 0x80), Continue: bit(h[1], 0x40), CSG: h[1] >> 2 & 3, NSG: h[1] & 3,
		VersionMax: h[2], VersionMin: h[3], TSIH: be16(h[14:]), ITT: be32(h[16:]), CID: be16(h[20:]),
		CmdSN: be32(h[24:]), ExpStatSN: be32(h[28:])}
	copy(m.ISID[:], h[8:14])
	return nil
}

func (m *LoginRequest) Marshal(h *Header) {
	h.start(OpLoginReq, true)
	h[1] = setIf(m.Transit, 0x80) | setIf(m.Continue, 0x40) | (m.CSG&3)<<2 | m.NSG&3
	h[2], h[3] = m.VersionMax, m.VersionMin
	copy(h[8:14], m.ISID[:])
	put16(h[14:], m.TSIH)
	put32(h[16:], m.ITT)
	put16(h[20:], m.CID)
	put32(h[24:], m.CmdSN)
	put32(h[28:], m.ExpStatSN)
}

// LoginResponse is a Login Response PDU (§11.13).
type LoginResponse struct {
	Transit, Continue               bool
	CSG, NSG                        uint8
	VersionMax, VersionActive       uint8
	ISID                            [6]byte
	TSIH                            uint16
	ITT, StatSN, ExpCmdSN, MaxCmdSN uint32
	StatusClass, StatusDetail       uint8
}

func (m *LoginResponse) Unmarshal(h *Header) error {
	if err := check(h, OpLoginResp); err != nil {
		return err
	}
	*m = LoginResponse{Transit: bit(h[1], 0x80), Continue: bit(h[1], 0x40), CSG: h[1] >> 2 & 3, NSG: h[1] & 3,
		VersionMax: h[2], VersionActive: h[3], TSIH: be16(h[14:]), ITT: be32(h[16:]), StatSN: be32(h[24:]),
		ExpCmdSN: be32(h[28:]), MaxCmdSN: be32(h[32:]), StatusClass: h[36], StatusDetail: h[37]}
	copy(m.ISID[:], h[8:14])
	return nil
}

func (m *LoginResponse) Marshal(h *Header) {
	h.start(OpLoginResp, false)
	h[1] = setIf(m.Transit, 0x80) | setIf(m.Continue, 0x40) | (m.CSG&3)<<2 | m.NSG&3
	h[2], h[3] = m.VersionMax, m.VersionActive
	copy(h[8:14], m.ISID[:])
	put16(h[14:], m.TSIH)
	put32(h[16:], m.ITT)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
	h[36], h[37] = m.StatusClass, m.StatusDetail
}

// Logout reasons (§11.14.1).
const (
	LogoutCloseSession    = 0
	LogoutCloseConnection = 1
	LogoutRemoveRecovery  = 2
)

// Logout responses (§11.15.1).
const (
	LogoutSuccess            = 0
	LogoutCIDNotFound        = 1
	LogoutRecoveryNotSupport = 2
	LogoutCleanupFailed      = 3
)

// LogoutRequest is a Logout Request PDU (§11.14).
type LogoutRequest struct {
	Immediate        bool
	Reason           uint8
	ITT              uint32
	CID              uint16
	CmdSN, ExpStatSN uint32
}

func (m *LogoutRequest) Unmarshal(h *Header) error {
	if err := check(h, OpLogoutReq); err != nil {
		return err
	}
	*m = LogoutRequest{Immediate: h.Immediate(), Reason: h[1] & 0x7f, ITT: be32(h[16:]), CID: be16(h[20:]),
		CmdSN: be32(h[24:]), ExpStatSN: be32(h[28:])}
	return nil
}

func (m *LogoutRequest) Marshal(h *Header) {
	h.start(OpLogoutReq, m.Immediate)
	h[1] = 0x80 | m.Reason&0x7f
	put32(h[16:], m.ITT)
	put16(h[20:], m.CID)
	put32(h[24:], m.CmdSN)
	put32(h[28:], m.ExpStatSN)
}

// LogoutResponse is a Logout Response PDU (§11.15).
type LogoutResponse struct {
	Response                        uint8
	ITT, StatSN, ExpCmdSN, MaxCmdSN uint32
	Time2Wait, Time2Retain          uint16
}

func (m *LogoutResponse) Unmarshal(h *Header) error {
	if err := check(h, OpLogoutResp); err != nil {
		return err
	}
	*m = LogoutResponse{Response: h[2], ITT: be32(h[16:]), StatSN: be32(h[24:]), ExpCmdSN: be32(h[28:]),
		MaxCmdSN: be32(h[32:]), Time2Wait: be16(h[40:]), Time2Retain: be16(h[42:])}
	return nil
}

func (m *LogoutResponse) Marshal(h *Header) {
	h.start(OpLogoutResp, false)
	h[1] = 0x80
	h[2] = m.Response
	put32(h[16:], m.ITT)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
	put16(h[40:], m.Time2Wait)
	put16(h[42:], m.Time2Retain)
}

// SNACKRequest is a SNACK Request PDU (§11.16).
type SNACKRequest struct {
	Type                uint8
	LUN                 uint64
	ITT, TTT, ExpStatSN uint32
	BegRun, RunLength   uint32
}

func (m *SNACKRequest) Unmarshal(h *Header) error {
	if err := check(h, OpSNACKReq); err != nil {
		return err
	}
	*m = SNACKRequest{Type: h[1] & 0x0f, LUN: be64(h[8:]), ITT: be32(h[16:]), TTT: be32(h[20:]),
		ExpStatSN: be32(h[28:]), BegRun: be32(h[40:]), RunLength: be32(h[44:])}
	return nil
}

func (m *SNACKRequest) Marshal(h *Header) {
	h.start(OpSNACKReq, false)
	h[1] = 0x80 | m.Type&0x0f
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.TTT)
	put32(h[28:], m.ExpStatSN)
	put32(h[40:], m.BegRun)
	put32(h[44:], m.RunLength)
}

// Reject reasons (§11.17.1).
const (
	RejectDataDigest          = 0x02
	RejectSNACK               = 0x03
	RejectProtocolError       = 0x04
	RejectCommandNotSupported = 0x05
	RejectImmediateRejected   = 0x06
	RejectTaskInProgress      = 0x07
	RejectInvalidDataACK      = 0x08
	RejectInvalidPDUField     = 0x09
	RejectOutOfResources      = 0x0a
	RejectNegotiationReset    = 0x0b
	RejectWaitingForLogout    = 0x0c
)

// Reject is a Reject PDU (§11.17). Its data segment is the rejected header.
type Reject struct {
	Reason                     uint8
	StatSN, ExpCmdSN, MaxCmdSN uint32
	DataSN                     uint32
}

func (m *Reject) Unmarshal(h *Header) error {
	if err := check(h, OpReject); err != nil {
		return err
	}
	*m = Reject{Reason: h[2], StatSN: be32(h[24:]), ExpCmdSN: be32(h[28:]), MaxCmdSN: be32(h[32:]), DataSN: be32(h[36:])}
	return nil
}

func (m *Reject) Marshal(h *Header) {
	h.start(OpReject, false)
	h[1] = 0x80
	h[2] = m.Reason
	put32(h[16:], 0xffffffff)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
	put32(h[36:], m.DataSN)
}

// NOPOut is a NOP-Out PDU (§11.18).
type NOPOut struct {
	Immediate                  bool
	LUN                        uint64
	ITT, TTT, CmdSN, ExpStatSN uint32
}

func (m *NOPOut) Unmarshal(h *Header) error {
	if err := check(h, OpNOPOut); err != nil {
		return err
	}
	*m = NOPOut{Immediate: h.Immediate(), LUN: be64(h[8:]), ITT: be32(h[16:]), TTT: be32(h[20:]),
		CmdSN: be32(h[24:]), ExpStatSN: be32(h[28:])}
	return nil
}

func (m *NOPOut) Marshal(h *Header) {
	h.start(OpNOPOut, m.Immediate)
	h[1] = 0x80
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.TTT)
	put32(h[24:], m.CmdSN)
	put32(h[28:], m.ExpStatSN)
}

// NOPIn is a NOP-In PDU (§11.19).
type NOPIn struct {
	LUN                                  uint64
	ITT, TTT, StatSN, ExpCmdSN, MaxCmdSN uint32
}

func (m *NOPIn) Unmarshal(h *Header) error {
	if err := check(h, OpNOPIn); err != nil {
		return err
	}
	*m = NOPIn{LUN: be64(h[8:]), ITT: be32(h[16:]), TTT: be32(h[20:]), StatSN: be32(h[24:]),
		ExpCmdSN: be32(h[28:]), MaxCmdSN: be32(h[32:])}
	return nil
}

func (m *NOPIn) Marshal(h *Header) {
	h.start(OpNOPIn, false)
	h[1] = 0x80
	put64(h[8:], m.LUN)
	put32(h[16:], m.ITT)
	put32(h[20:], m.TTT)
	put32(h[24:], m.StatSN)
	put32(h[28:], m.ExpCmdSN)
	put32(h[32:], m.MaxCmdSN)
}
