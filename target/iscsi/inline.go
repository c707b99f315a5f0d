package iscsi

import (
	"encoding/binary"

	"tandem.io/tandem/volume/block"
)

// Inline commands. At queue depth 1 a command handed to a goroutine of its
// own and its response handed on to the writer goroutine cost two
// goroutine wake-ups (futex calls, and often a sleeping thread woken) and a
// fresh goroutine stack grown on every command: 10.6 system calls per 4 KiB
// read against 4.3 inline (docs/benchmarks.md). So a small read or write
// whose data is all in, arriving while nothing else is in flight on the
// connection and nothing more is buffered to read, runs on the reader
// goroutine, and when the writer has nothing queued its response goes to
// the socket from there too, in one write.
//
// The price is that the reader reads nothing while the command runs. That
// is why only commands that finish quickly qualify: READ and WRITE of at
// most inlineMax bytes, by the CDB and by the expected length alike, a
// WRITE only without FUA (a page-cache write, not a sync). A read that
// misses the page cache, or a write to a logical unit whose write cache is
// off (the transport cannot tell either), holds the reader for one device
// access; a PDU arriving meanwhile waits that long, as it would behind a
// busy writer. Sending the response can block too, if the initiator has
// left a socket's worth of earlier responses unread; the write deadline
// (NOPTimeout) ends that as it ends a blocked writer, and an initiator that
// reads its responses while it sends never meets it.
//
// Everything else is as on the goroutine path: the task is in c.tasks,
// executing, from before it runs until its response is sent; a reset or
// PREEMPT AND ABORT from another connection aborts it (no response is
// sent, claimResponse decides) and waits for its Execute to return (ended,
// closed by conn.execute, the one place a command executes on either
// path); a task management request on this connection is read after it
// has finished, so it finds it answered.

// inlineMax is the largest data transfer of an inline command.
const inlineMax = 16 << 10

// mayRunInline reports whether t, whose data is all in, runs on the reader
// goroutine. Reader goroutine only.
func (c *conn) mayRunInline(t *task) bool {
	if t.cmd.ExpectedDataTransferLength > inlineMax || !quickCDB(t.cdb) {
		return false
	}
	// Another PDU already read into the buffer means the initiator has
	// more in flight: let the commands run side by side.
	if b, ok := c.rd.R.(interface{ Buffered() int }); !ok || b.Buffered() > 0 {
		return false
	}
	c.mu.Lock()
	alone := len(c.tasks) == 1
	c.mu.Unlock()
	return alone
}

// quickCDB reports whether a CDB is a READ, or a WRITE without FUA, of at
// most inlineMax bytes: a command that moves a little data to or from the
// page cache and is done. cdb has at least 16 bytes.
func quickCDB(cdb []byte) bool {
	var blocks uint32
	switch cdb[0] {
	case 0x08, 0x0a: // READ (6), WRITE (6): no FUA bit; 0 blocks means 256
		blocks = uint32(cdb[4])
		if blocks == 0 {
			blocks = 256
		}
	case 0x28, 0x2a: // READ (10), WRITE (10)
		blocks = uint32(binary.BigEndian.Uint16(cdb[7:]))
	case 0xa8, 0xaa: // READ (12), WRITE (12)
		blocks = binary.BigEndian.Uint32(cdb[6:])
	case 0x88, 0x8a: // READ (16), WRITE (16)
		blocks = binary.BigEndian.Uint32(cdb[10:])
	default:
		return false
	}
	fua := cdb[0] != 0x0a && cdb[0]&0x0f == 0x0a && cdb[1]&0x08 != 0
	return !fua && blocks <= inlineMax/block.LogicalBlockSize
}

// runInline executes t on the reader goroutine and sends its response: on
// the socket at once when the writer is idle (nothing queued, wmu free),
// else through the writer's queue like any other. A write that would have
// to wait for another command's claim on its blocks is not waited for
// here (the reader would read nothing meanwhile, not even an ABORT TASK):
// it reports false, having done nothing, and the caller runs it on a
// goroutine. Reader goroutine only.
func (c *conn) runInline(t *task) bool {
	if !c.run(t, true) {
		return false
	}
	if len(c.out) > 0 || !c.wmu.TryLock() {
		c.send(outItem{kind: outTaskResult, t: t})
		return true
	}
	defer c.wmu.Unlock()
	if c.ctx.Err() != nil {
		// Closing: the writer may be gone; finish releases the task.
		return true
	}
	// StatSN is assigned under wmu, so the wire order stays the StatSN
	// order whoever sends; the flush also sends whatever the writer had
	// buffered before this response. The write deadline bounds how long
	// an initiator that does not read can hold the reader here, as it
	// bounds the writer.
	c.armWriteDeadline()
	err := c.writeResult(&c.w, t)
	if err == nil {
		err = c.w.Flush()
	}
	if err != nil {
		c.writeFailed(err)
	}
	return true
}
