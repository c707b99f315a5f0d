package scsi

import (
	"context"
	"fmt"
	"log/slog"

	"tandem.io/tandem/volume/block"
)

// Status is a SCSI status byte (SAM-5).
type Status byte

// SCSI status codes.
const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusACAActive           Status = 0x30
	StatusTaskAborted         Status = 0x40
)

// Nexus names an I_T nexus: one initiator port talking to one target port.
// Unit attentions and (later) reservations are kept per nexus. Nexus is a
// comparable value and is used as a map key.
type Nexus struct {
	// InitiatorPort is the initiator's port name, for iSCSI
	// "<initiator name>,i,0x<ISID in hex>" (see IPortName).
	InitiatorPort string
	// TargetPort is the target port name, for iSCSI "<target name>,t,0x<TPGT>".
	TargetPort string
	// RelativePortID is the relative target port identifier (VPD 0x83).
	RelativePortID uint16
	// PortGroup is the target port group (ALUA) the port belongs to.
	PortGroup uint16
}

// iscsiPortSep separates an iSCSI initiator port name's initiator name from
// its ISID (SPC-4 §7.6.4.6).
const iscsiPortSep = ",i,0x"

// IPortName is the iSCSI initiator port name of an initiator name and ISID
// (12 hex digits), the form Nexus.InitiatorPort and TransportIDs take here.
func IPortName(initiator string, isid [6]byte) string {
	return fmt.Sprintf("%s"+iscsiPortSep+"%x", initiator, isid[:])
}

// Command is one SCSI command as the transport hands it over.
type Command struct {
	Nexus Nexus
	LUN   uint64
	// CDB is the command descriptor block (6 to 16 bytes, or longer with an
	// additional-CDB AHS). Owned by the caller, valid during Execute.
	CDB []byte
	// DataOut holds the data the initiator sent (write direction), at most
	// ExpectedLength bytes. Owned by the caller, valid during Execute.
	DataOut []byte
	// ExpectedLength is the transport's expected data transfer length: the
	// most data the initiator is prepared to send or receive.
	ExpectedLength uint32
	// Buf is an optional buffer the executor may use for Data-In to avoid an
	// allocation; the returned Result.Data may alias it.
	Buf []byte
	// MaySend says the transport can send a large read's Data-In itself
	// from the device (Result.Send) instead of receiving it in Result.Data.
	MaySend bool
	// NoWait says the transport runs the command where waiting would hold
	// up other work (its connection's reader): a write that would have to
	// wait for another command's claim on its blocks does nothing and
	// returns Result.Busy, for the transport to run it again elsewhere.
	NoWait bool
	// Passed: another port of the unit passed the command here
	// (LUConfig.PassReservations); its access state was checked there.
	Passed bool
}

// Sending is Data-In left on the device for the transport to send with
// block.Sender: the Len bytes at Off. Len 0 means there is none.
type Sending struct {
	Dev      block.Sender
	Off, Len int64
}

// Result is the outcome of a command.
type Result struct {
	Status Status
	// Sense is the sense data (fixed format) when Status is CHECK CONDITION.
	Sense []byte
	// DataLen, when larger than len(Data), is the Data-In length the
	// command produced of which Data holds only what the initiator's
	// expected length lets it receive (the rest is never sent); for the
	// transport's residual count.
	DataLen int
	// Data is the Data-In to return. It may be longer than ExpectedLength
	// (the transport then sends ExpectedLength bytes and reports an overflow)
	// or shorter (an underflow).
	Data []byte
	// DataOutLength is the number of bytes the command needed from the
	// initiator (write direction), for the transport's residual count.
	DataOutLength int
	// Send, when its Len is not 0, is the Data-In instead of Data (only
	// when Command.MaySend). The status was decided without reading it.
	Send Sending
	// Busy (only with Command.NoWait): the command did nothing, because it
	// would have waited; run it again without NoWait. Status is not set.
	Busy bool
	// AbortNexuses, set by PERSISTENT RESERVE OUT with PREEMPT AND ABORT,
	// lists the I_T nexuses (initiator and target port) whose tasks on
	// this LUN the transport aborts, as if by ABORT TASK SET, before it
	// sends this command's status (SPC-4 §5.13.11.2.4).
	AbortNexuses []Nexus
}

// DataInLength is the length of the Data-In, in Data or in Send.
func (r *Result) DataInLength() int {
	switch {
	case r.Send.Len > 0:
		return int(r.Send.Len)
	case r.DataLen > len(r.Data):
		return r.DataLen
	}
	return len(r.Data)
}

// LUConfig configures one logical unit.
type LUConfig struct {
	// Device holds the data. Optional capabilities (block.Unmapper) are
	// found by type assertion. A device is served by one logical unit: the
	// order of overlapping writes the block.Device contract promises is
	// kept per logical unit.
	Device block.Device
	// NAA is the 16-byte NAA-6 (IEEE registered extended) designator, the
	// same on every node serving the volume.
	NAA [16]byte
	// Serial is the unit serial number (VPD 0x80).
	Serial string
	// VendorID (8 chars), ProductID (16) and Revision (4) for INQUIRY; empty
	// means the defaults "TANDEM", "VOLUME", a build revision.
	VendorID, ProductID, Revision string
	// ReadOnly makes writes fail with DATA PROTECT / WRITE PROTECTED.
	ReadOnly bool
	// Copy finds the other logical units of the node for EXTENDED COPY;
	// nil limits copies to this logical unit.
	Copy CopyLocator
	// Reservations keeps the persistent reservation state across restarts;
	// nil keeps it in memory only.
	Reservations ReservationStore
	// PassReservations, when set, runs a PERSISTENT RESERVE IN or OUT that
	// arrives through a standby port where the reservation state is
	// decided — the unit behind the active port, on another node — and
	// returns its result (Target.ExecutePassed there); an error answers
	// NOT READY, standby (the initiator tries another path). PREEMPT AND
	// ABORT is not passed: its tasks to abort are where the active port
	// is, so it is refused the same way. Nil: PERSISTENT RESERVE OUT
	// through a standby port is refused, and IN answers from this unit.
	PassReservations func(ctx context.Context, cmd *Command) (Result, error)
	Logger           *slog.Logger
}
