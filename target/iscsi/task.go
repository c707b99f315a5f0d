package iscsi

import (
	"context"
	"sync/atomic"

	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
)

type taskState uint8

const (
	taskGathering taskState = iota // waiting for write data
	taskExecuting                  // handed to the SCSI layer
)

// dataSeq is one expected sequence of Data-Out PDUs: the unsolicited burst
// or the answer to one R2T. Data must arrive in order (DataPDUInOrder=Yes).
type dataSeq struct {
	ttt        uint32
	next, end  uint32 // next expected buffer offset; end of the sequence
	nextDataSN uint32
}

type region struct{ off, len uint32 }

// A task is one SCSI command from its arrival to its response.
type task struct {
	owner *conn
	cmd   pdu.SCSICommand
	cdb   []byte
	lun   uint64

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the response was sent or dropped
	// immediate: the command holds one of the session's immediate-command
	// slots rather than a command window slot. holdsSlot: it still does
	// (owned by the reader until the task is queued for the writer, then
	// by the writer).
	immediate, holdsSlot bool

	// run decides, once, whether the task executes: its goroutine claims
	// it (runStarted) or a fence bars it first (runBarred). ended is
	// closed when a started task's Execute has returned: from then on it
	// no longer touches the device, whatever becomes of its response.
	run   atomic.Int32
	ended chan struct{}
	// claimed: this task's run was claimed by the goroutine executing it
	// (read and written only by that goroutine, then by the one it hands
	// a busy inline command to, after it).
	claimed bool

	// Reader-goroutine state.
	state    taskState
	buf      []byte // write data (EDTL bytes) from the buffer pool
	readBuf  []byte // Data-In buffer from the pool
	budget   int64  // bytes reserved from the server's buffer budget
	received uint32
	unsol    *dataSeq   // unsolicited sequence while it is open
	r2ts     []*dataSeq // outstanding R2Ts
	pending  []region   // regions still to request with R2T
	r2tSN    uint32

	// fate decides, once, whether the task is answered or aborted.
	fate atomic.Int32
	res  scsi.Result
}

const (
	fateOpen     = iota
	fateAnswered // the writer is sending its response
	fateAborted  // aborted; no response is sent
)

// abort aborts the task unless its response is already being sent, and
// reports whether it did.
func (t *task) abort() bool {
	if !t.fate.CompareAndSwap(fateOpen, fateAborted) {
		return t.fate.Load() == fateAborted
	}
	t.cancel()
	return true
}

const (
	runIdle    = iota
	runStarted // executing or executed; ended says which
	runBarred  // will never execute
)

// claimRun reports whether the task may execute: false once it was
// fenced. The caller that gets true must close ended when Execute returns.
func (t *task) claimRun() bool { return t.run.CompareAndSwap(runIdle, runStarted) }

// fence makes sure the task can no longer touch the device. A task that
// has not started executing never will; for one that has, fence returns a
// channel closed when its Execute has returned. nil means there is
// nothing to wait for. Unlike done, this does not depend on the task's
// response being sent, so a victim whose initiator stopped reading cannot
// hold up the fence. Safe from any goroutine, any number of times.
func (t *task) fence() <-chan struct{} {
	if t.run.CompareAndSwap(runIdle, runBarred) || t.run.Load() == runBarred {
		return nil
	}
	return t.ended
}

// claimResponse reports whether the task's response may be sent.
func (t *task) claimResponse() bool { return t.fate.CompareAndSwap(fateOpen, fateAnswered) }

// complete reports whether all write data has arrived.
func (t *task) complete() bool {
	return t.unsol == nil && len(t.r2ts) == 0 && len(t.pending) == 0
}

// decodeLUN turns the 8-byte iSCSI LUN field (SAM-5 §4.7) into a LUN
// number: peripheral device addressing (method 0) or flat space (method 1).
// Anything else maps to a number no target has.
func decodeLUN(raw uint64) uint64 {
	const invalid = 1 << 63
	if raw&0x0000ffffffffffff != 0 {
		return invalid
	}
	b0, b1 := byte(raw>>56), byte(raw>>48)
	switch b0 >> 6 {
	case 0:
		if b0&0x3f != 0 {
			return invalid
		}
		return uint64(b1)
	case 1:
		return uint64(b0&0x3f)<<8 | uint64(b1)
	}
	return invalid
}
