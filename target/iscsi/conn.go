package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tandem.io/tandem/target/iscsi/login"
	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
	"tandem.io/tandem/volume/block"
)

// A conn is one TCP connection. Its reader goroutine (run) reads and
// dispatches PDUs; its writer goroutine (writeLoop) sends what the others
// queue; each SCSI command executes in a goroutine of its own, except a
// small one that arrives alone, which the reader runs and answers itself
// (inline.go). All of them are tracked by wg and stop when ctx is
// cancelled.
type conn struct {
	srv *Server
	nc  net.Conn
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // task workers and TMF goroutines
	// idle hands a task to a worker waiting for one (ffp.go, goRun).
	idle chan *task

	rd  pdu.Reader
	out chan outItem
	// wmu protects w (the socket's write side in full-feature phase),
	// statSN and deadlineArmed: the writer goroutine holds it for each
	// item it sends, the reader goroutine (TryLock) to answer an inline
	// command.
	wmu sync.Mutex
	w   pdu.Writer
	// accepted is when the connection came in; inLogin is true until its
	// login phase ends (Server.loginSlot picks the oldest to evict).
	accepted time.Time
	inLogin  atomic.Bool

	// writerDone is closed when writeLoop returns.
	writerDone chan struct{}
	// replySlots bounds the replies with data (NOP-In echoing a ping,
	// Text Response) queued in out: one slot each, freed by the writer
	// once sent. While all are taken the reader waits, so an initiator
	// that pings with large data and never reads cannot pile them up.
	replySlots chan struct{}
	// tmfSlots bounds the task management requests waiting for their
	// victims, each in a goroutine; the reader waits for a free one.
	tmfSlots chan struct{}
	// deadlineArmed is when the socket's write deadline was last moved;
	// under wmu.
	deadlineArmed time.Time

	// Set once at the end of login, read-only afterwards.
	sess   *session
	params login.Params
	cid    uint16
	// maySend: large reads may go from the device to the socket with
	// sendfile (no data digest to compute, and a socket that allows it).
	maySend bool

	// statSN is under wmu after login.
	statSN uint32
	// lastRecv is the unix nano time of the last PDU read (NOP keep-alive).
	lastRecv atomic.Int64

	mu        sync.Mutex // protects tasks, nextTTT, nopPending
	tasks     map[uint32]*task
	nextTTT   uint32
	nopTTT    uint32 // TTT of our outstanding NOP-In ping, 0 if none
	nopSentAt time.Time

	// wasteAt is when the connection's allowance for ignored and
	// rejected PDUs is spent (see charge); wasteNoted says the throttle
	// was logged, rejected counts rejected PDUs for noteRejected.
	// Reader-goroutine only.
	wasteAt    time.Time
	wasteNoted bool
	rejected   int

	// pendingText holds the rest of a long Text Response awaiting the
	// initiator's continuation request; reader-goroutine only.
	pendingText     []byte
	pendingTextTTT  uint32
	accumulatedText []byte
}

type outKind uint8

const (
	outPDU        outKind = iota // hdr+data as is; SN fields filled in
	outTaskResult                // send t's Data-In and status
	outR2T                       // R2T for t, region in hdr
	outClose                     // flush, then close the connection
	outFlush                     // flush, then close flushed
)

// outItem is one unit of work for the writer goroutine.
type outItem struct {
	kind outKind
	// advance says the PDU carries status: StatSN is assigned and advanced.
	advance bool
	// slot: the item holds one of replySlots, freed once it is written.
	slot    bool
	hdr     pdu.Header
	data    []byte
	t       *task
	flushed chan struct{} // outFlush
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancelCause(s.ctx)
	c := &conn{
		srv:        s,
		nc:         nc,
		log:        s.log.With("remote", nc.RemoteAddr().String()),
		ctx:        ctx,
		cancel:     cancel,
		out:        make(chan outItem, sendQueue),
		writerDone: make(chan struct{}),
		replySlots: make(chan struct{}, replySlots),
		tmfSlots:   make(chan struct{}, tmfSlots),
		tasks:      make(map[uint32]*task),
		nextTTT:    1,
		idle:       make(chan *task),
	}
	c.rd = pdu.Reader{R: bufio.NewReaderSize(nc, 256<<10), MaxDataSegmentLength: 8192}
	c.lastRecv.Store(time.Now().UnixNano())
	c.accepted = time.Now()
	c.inLogin.Store(true)
	return c
}

// Per-connection bounds (see Config for what they add up to).
const (
	sendQueue  = 512 // items queued for the writer
	replySlots = 4   // replies with data among them
	tmfSlots   = 8   // task management requests waiting for their victims
)

// errLogout ends a connection after a successful logout.
var errLogout = errors.New("logged out")

// serve runs the connection to its end: login, then full-feature phase.
func (c *conn) serve() {
	defer c.finish()
	err := c.login()
	c.inLogin.Store(false)
	<-c.srv.logins
	if err != nil {
		// A session may exist already (the login failed while its final
		// answer went out): no writer runs for it.
		close(c.writerDone)
		if !isClosedErr(err) {
			c.log.Info("iscsi login failed", "err", err)
		}
		return
	}
	c.w = pdu.Writer{Dst: c.nc, HeaderDigest: c.params.HeaderDigest, DataDigest: c.params.DataDigest}
	go c.writeLoop()
	if c.srv.cfg.NOPInterval > 0 {
		c.wg.Add(1)
		go c.keepAlive()
	}
	err = c.fullFeature()
	switch {
	case errors.Is(err, errLogout):
		c.log.Info("iscsi logout")
	case isClosedErr(err):
		c.log.Info("iscsi connection closed", "cause", context.Cause(c.ctx))
	default:
		c.log.Warn("iscsi connection dropped", "err", err)
	}
}

func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.Canceled) || errors.Is(err, errConnClosed)
}

var errConnClosed = errors.New("connection closed")

// close ends the connection from any goroutine.
func (c *conn) close(cause error) {
	c.cancel(cause)
	c.nc.Close()
}

// finish runs on the reader goroutine when the connection ends: it stops the
// writer, aborts every task and waits for all goroutines.
func (c *conn) finish() {
	c.close(errConnClosed)
	c.mu.Lock()
	for _, t := range c.tasks {
		t.abort()
	}
	c.mu.Unlock()
	c.wg.Wait()
	if c.sess != nil {
		<-c.writerDone
		c.mu.Lock()
		for itt, t := range c.tasks {
			delete(c.tasks, itt)
			c.releaseTask(t)
		}
		c.mu.Unlock()
		c.sess.connClosed(c)
	}
	c.srv.removeConn(c)
}

// send queues an item for the writer. It fails once the connection is
// closing, so callers never block on a dead connection.
func (c *conn) send(it outItem) bool {
	select {
	case c.out <- it:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// sendPDU queues a complete target PDU built by m.
func (c *conn) sendPDU(m interface{ Marshal(*pdu.Header) }, data []byte, advance bool) bool {
	it := outItem{kind: outPDU, data: data, advance: advance}
	m.Marshal(&it.hdr)
	return c.send(it)
}

// trySendPDU queues a PDU if the writer's queue has room, never waiting:
// for messages to a connection that may not be reading.
func (c *conn) trySendPDU(m interface{ Marshal(*pdu.Header) }, data []byte, advance bool) bool {
	it := outItem{kind: outPDU, data: data, advance: advance}
	m.Marshal(&it.hdr)
	select {
	case c.out <- it:
		return true
	default:
		return false
	}
}

// sendReply queues a reply carrying status and data (NOP-In, Text
// Response). Data holds one of replySlots until written; while all are
// taken, it waits.
func (c *conn) sendReply(m interface{ Marshal(*pdu.Header) }, data []byte) bool {
	it := outItem{kind: outPDU, data: data, advance: true}
	m.Marshal(&it.hdr)
	if len(data) > 0 {
		select {
		case c.replySlots <- struct{}{}:
			it.slot = true
		case <-c.ctx.Done():
			return false
		}
	}
	return c.send(it)
}

// writeLoop sends the queued items in full-feature phase. It flushes only
// when the queue is empty, so that responses to many commands share a
// system call.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	for {
		var it outItem
		select {
		case it = <-c.out:
		default:
			c.wmu.Lock()
			c.armWriteDeadline()
			err := c.w.Flush()
			c.wmu.Unlock()
			if err != nil {
				c.writeFailed(err)
				return
			}
			select {
			case it = <-c.out:
			case <-c.ctx.Done():
				return
			}
		}
		c.wmu.Lock()
		c.armWriteDeadline()
		err := c.write(&c.w, &it)
		c.wmu.Unlock()
		if it.slot {
			<-c.replySlots
		}
		if err != nil {
			if !errors.Is(err, errLogout) {
				c.writeFailed(err)
			}
			return
		}
	}
}

// armWriteDeadline keeps the socket's write deadline at least 3/4 of
// NOPTimeout ahead of every write the writer starts (it is moved when a
// quarter has passed, not per PDU). An initiator that stops reading its
// responses is thus dropped once a write has blocked that long, which
// frees everything its commands hold; the keep-alive alone cannot tell,
// since its NOP-In would wait behind the blocked write. c.wmu must be held.
func (c *conn) armWriteDeadline() {
	now := time.Now()
	if now.Sub(c.deadlineArmed) < c.srv.cfg.NOPTimeout/4 {
		return
	}
	c.deadlineArmed = now
	c.nc.SetWriteDeadline(now.Add(c.srv.cfg.NOPTimeout))
}

// writeFailed ends the connection after a failed write.
func (c *conn) writeFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.log.Warn("iscsi initiator stopped reading its responses; dropping connection", "timeout", c.srv.cfg.NOPTimeout)
		err = fmt.Errorf("initiator did not read for %v: %w", c.srv.cfg.NOPTimeout, err)
	}
	c.close(fmt.Errorf("write: %w", err))
}

// fillSN writes StatSN, ExpCmdSN and MaxCmdSN into a target PDU header.
// c.wmu must be held.
func (c *conn) fillSN(h *pdu.Header, advance bool) {
	exp, max := c.sess.window()
	if advance || h.Opcode() == pdu.OpR2T || h.Opcode() == pdu.OpNOPIn {
		put32(h[24:], c.statSN)
	}
	put32(h[28:], exp)
	put32(h[32:], max)
	if advance {
		c.statSN++
	}
}

func (c *conn) write(w *pdu.Writer, it *outItem) error {
	switch it.kind {
	case outPDU:
		c.fillSN(&it.hdr, it.advance)
		return w.WritePDU(&it.hdr, it.data)
	case outR2T:
		c.fillSN(&it.hdr, false)
		return w.WritePDU(&it.hdr, nil)
	case outTaskResult:
		return c.writeResult(w, it.t)
	case outFlush:
		err := w.Flush()
		close(it.flushed)
		return err
	case outClose:
		w.Flush()
		return errLogout
	}
	return nil
}

// writeResult sends a finished command's Data-In and status, then frees it.
func (c *conn) writeResult(w *pdu.Writer, t *task) error {
	defer c.completeTask(t)
	if !t.claimResponse() {
		return nil // aborted
	}
	res := &t.res
	readLen := 0
	if t.cmd.Read {
		readLen = int(t.cmd.ExpectedDataTransferLength)
	}
	var need, have int
	if t.cmd.Write {
		need, have = res.DataOutLength, int(t.cmd.ExpectedDataTransferLength)
	} else {
		need, have = res.DataInLength(), readLen
		if !t.cmd.Read {
			have = int(t.cmd.ExpectedDataTransferLength)
		}
	}
	var overflow, underflow bool
	var residual uint32
	switch {
	case need > have:
		overflow, residual = true, uint32(need-have)
	case need < have:
		underflow, residual = true, uint32(have-need)
	}
	data := res.Data
	if len(data) > readLen {
		data = data[:readLen]
	}
	dataLen := len(data)
	if res.Send.Len > 0 {
		dataLen = min(int(res.Send.Len), readLen)
	}
	// Phase collapse (the status in the last Data-In) only for data in
	// hand: data sent from the device is read while it is sent, so its
	// status follows it, and can still be a MEDIUM ERROR.
	collapse := res.Status == scsi.StatusGood && res.Send.Len == 0
	// Data-In PDUs, each at most the initiator's MaxRecvDataSegmentLength,
	// with F at the end of every MaxBurstLength sequence.
	mrdsl := int(c.params.MaxRecvDataSegmentLength)
	burst := int(c.params.MaxBurstLength)
	var dataSN uint32
	for off := 0; off < dataLen; {
		n := min(dataLen-off, mrdsl, burst-off%burst)
		last := off+n == dataLen
		// Data read while it is sent ends each PDU's sequence (F): should
		// the device fail, no sequence is left open.
		m := pdu.DataIn{
			Final: last || (off+n)%burst == 0 || res.Send.Len > 0, LUN: t.cmd.LUN, ITT: t.cmd.ITT, TTT: 0xffffffff,
			DataSN: dataSN, BufferOffset: uint32(off),
		}
		if last && collapse {
			m.StatusPresent, m.Status = true, uint8(res.Status)
			m.Overflow, m.Underflow, m.Residual = overflow, underflow, residual
		}
		var h pdu.Header
		m.Marshal(&h)
		if m.StatusPresent {
			c.freeSlot(t)
		}
		c.fillSN(&h, m.StatusPresent)
		if res.Send.Len > 0 {
			// Straight from the page cache: header, then sendfile.
			if err := w.WriteHeaderFor(&h, n); err != nil {
				return err
			}
			sent, err := res.Send.Dev.SendTo(t.ctx, c.nc.(syscall.Conn), res.Send.Off+int64(off), int64(n))
			if err != nil && !errors.Is(err, block.ErrMedium) && !errors.Is(err, block.ErrNoSpace) {
				return fmt.Errorf("data-in for task 0x%x: %w", t.cmd.ITT, err)
			}
			if err != nil {
				// The disk failed under the read: the segment is
				// completed with zeros, no more data follows, and the
				// status says MEDIUM ERROR.
				c.log.Warn("iscsi: read failed while sending its data", "itt", t.cmd.ITT, "err", err)
				if err := w.ZeroFill(n - int(sent)); err != nil {
					return err
				}
				if err := w.EndDataFor(n); err != nil {
					return err
				}
				dataSN++
				res.Status, res.Sense = scsi.StatusCheckCondition, mediumReadError
				overflow, underflow, residual = false, readLen > off+n, uint32(max(readLen-off-n, 0))
				break
			}
			// Segments may be any length the initiator's
			// MaxRecvDataSegmentLength allows, 8191 bytes say: pad them.
			if err := w.EndDataFor(n); err != nil {
				return err
			}
		} else if err := w.WritePDU(&h, data[off:off+n]); err != nil {
			return err
		}
		dataSN++
		off += n
		if last && collapse {
			return nil
		}
	}
	m := pdu.SCSIResponse{Status: uint8(res.Status), ITT: t.cmd.ITT, ExpDataSN: dataSN,
		Overflow: overflow, Underflow: underflow, Residual: residual}
	var h pdu.Header
	m.Marshal(&h)
	c.freeSlot(t)
	c.fillSN(&h, true)
	var sense []byte
	if len(res.Sense) > 0 {
		sense = make([]byte, 2+len(res.Sense))
		put16(sense, uint16(len(res.Sense)))
		copy(sense[2:], res.Sense)
	}
	return w.WritePDU(&h, sense)
}

// mediumReadError is fixed-format sense data for MEDIUM ERROR /
// UNRECOVERED READ ERROR, for a read the device failed while it was sent.
var mediumReadError = []byte{0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0}

func put32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}
func put16(b []byte, v uint16) { b[0], b[1] = byte(v>>8), byte(v) }

// keepAlive pings an idle initiator with NOP-In and drops the connection if
// it does not answer in time.
func (c *conn) keepAlive() {
	defer c.wg.Done()
	interval := c.srv.cfg.NOPInterval
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-tick.C:
			c.mu.Lock()
			pending, sentAt := c.nopTTT, c.nopSentAt
			c.mu.Unlock()
			if pending != 0 {
				if now.Sub(sentAt) > c.srv.cfg.NOPTimeout {
					c.log.Warn("iscsi initiator did not answer NOP-In; dropping connection", "timeout", c.srv.cfg.NOPTimeout)
					c.close(fmt.Errorf("NOP-In timeout after %v", c.srv.cfg.NOPTimeout))
					return
				}
				continue
			}
			if now.Sub(time.Unix(0, c.lastRecv.Load())) < interval {
				continue
			}
			c.mu.Lock()
			ttt := c.newTTT()
			c.nopTTT, c.nopSentAt = ttt, now
			c.mu.Unlock()
			c.sendPDU(&pdu.NOPIn{LUN: 0, ITT: 0xffffffff, TTT: ttt}, nil, false)
		}
	}
}

// newTTT returns a target transfer tag unique on this connection; never
// 0xffffffff (reserved) nor 0. c.mu must be held.
func (c *conn) newTTT() uint32 {
	c.nextTTT++
	if c.nextTTT == 0xffffffff || c.nextTTT == 0 {
		c.nextTTT = 1
	}
	return c.nextTTT
}
