package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"tandem.io/tandem/target/iscsi/login"
	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
)

// errProtocol ends a connection after a protocol violation (error recovery
// level 0 recovers by dropping the connection; the initiator logs in again).
var errProtocol = errors.New("iscsi protocol error")

// fullFeature is the reader loop of the full-feature phase.
func (c *conn) fullFeature() error {
	for {
		var h pdu.Header
		ahs, err := c.rd.ReadHeader(&h)
		if err != nil {
			if errors.Is(err, pdu.ErrDataTooLong) {
				return c.protocolError(&h, pdu.RejectProtocolError, err.Error())
			}
			return err
		}
		c.lastRecv.Store(time.Now().UnixNano())
		if err := c.dispatch(&h, ahs); err != nil {
			return err
		}
	}
}

func (c *conn) dispatch(h *pdu.Header, ahs []byte) error {
	switch h.Opcode() {
	case pdu.OpSCSICommand:
		return c.handleCommand(h, ahs)
	case pdu.OpDataOut:
		return c.handleDataOut(h)
	case pdu.OpNOPOut:
		return c.handleNOPOut(h)
	case pdu.OpTaskMgmtReq:
		return c.handleTMF(h)
	case pdu.OpTextReq:
		return c.handleText(h)
	case pdu.OpLogoutReq:
		return c.handleLogout(h)
	default:
		// SNACK needs error recovery level 1; anything else is unknown.
		if err := c.rd.DiscardData(h); err != nil {
			return err
		}
		c.noteRejected("iscsi: rejecting unsupported PDU", "opcode", h.Opcode().String())
		c.reject(h, pdu.RejectCommandNotSupported)
		return c.charge(h.DataSegmentLength())
	}
}

// Ignored and rejected PDUs — outside the command window, immediate
// commands beyond the allowance, Data-Out for no waiting task, malformed
// commands — are of no use, and a well-behaved initiator sends almost
// none. Each is charged to its connection: wasteCost plus its data, at
// most wasteRate bytes a second after a burst of wasteBurst of them.
// Beyond that the reader waits before it reads on, so the initiator's
// writes block: a flood of them costs the node a bounded share of a core
// (about 4000 PDUs or 4 MiB a second) instead of as much as the initiator
// can send, and the node's other sessions do not wait behind it.
const (
	wasteCost  = 1 << 10
	wasteRate  = 4 << 20
	wasteBurst = time.Second
)

// charge accounts for an ignored or rejected PDU with n bytes of data and
// waits if the connection is over its allowance. Reader-goroutine only.
func (c *conn) charge(n int) error {
	var wait time.Duration
	c.wasteAt, wait = wasteWait(c.wasteAt, time.Now(), n)
	if wait <= 0 {
		return nil
	}
	if !c.wasteNoted {
		c.wasteNoted = true
		c.log.Warn("iscsi: initiator keeps sending PDUs that are ignored or rejected; reading its connection more slowly")
	}
	tm := time.NewTimer(wait)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
}

// wasteWait is charge's arithmetic: at is when the allowance is spent
// (a virtual clock that each PDU moves by its cost over wasteRate, and
// that never lags now); it returns the clock moved by a PDU of n data
// bytes arriving at now, and how long the reader must wait for it.
func wasteWait(at, now time.Time, n int) (time.Time, time.Duration) {
	if at.Before(now) {
		at = now
	}
	at = at.Add(time.Duration(int64(wasteCost+n) * int64(time.Second) / wasteRate))
	return at, at.Sub(now) - wasteBurst
}

// ignore discards a PDU's data and charges it as ignored.
func (c *conn) ignore(h *pdu.Header) error {
	if err := c.rd.DiscardData(h); err != nil {
		return err
	}
	return c.charge(h.DataSegmentLength())
}

// noteRejected logs a rejected PDU: at Info for the first few of a
// connection, then at Debug, so that a flood of them does not flood the
// log too.
func (c *conn) noteRejected(msg string, args ...any) {
	c.rejected++
	level := slog.LevelDebug
	if c.rejected <= 16 {
		level = slog.LevelInfo
	}
	c.log.Log(c.ctx, level, msg, args...)
}

// reject answers a PDU with a Reject carrying its header.
func (c *conn) reject(h *pdu.Header, reason uint8) {
	hdr := make([]byte, pdu.BHSLen)
	copy(hdr, h[:])
	c.sendPDU(&pdu.Reject{Reason: reason, DataSN: 0}, hdr, true)
}

// protocolError rejects h, lets the writer send the Reject, and ends the
// connection.
func (c *conn) protocolError(h *pdu.Header, reason uint8, why string) error {
	c.reject(h, reason)
	c.send(outItem{kind: outClose})
	select {
	case <-c.writerDone:
	case <-time.After(2 * time.Second):
	}
	return fmt.Errorf("%w: %s (%v)", errProtocol, why, h.Opcode())
}

// readData reads a PDU's data segment into a new slice, or fails with a
// reject on a data digest error.
func (c *conn) readData(h *pdu.Header) ([]byte, error) {
	data := make([]byte, h.DataSegmentLength())
	if err := c.rd.ReadData(h, data); err != nil {
		if errors.Is(err, pdu.ErrDataDigest) {
			return nil, c.protocolError(h, pdu.RejectDataDigest, err.Error())
		}
		return nil, err
	}
	return data, nil
}

func (c *conn) handleCommand(h *pdu.Header, ahs []byte) error {
	var cmd pdu.SCSICommand
	cmd.Unmarshal(h)
	dsl := uint32(h.DataSegmentLength())
	if c.sess.target == nil {
		if err := c.rd.DiscardData(h); err != nil {
			return err
		}
		return c.protocolError(h, pdu.RejectProtocolError, "SCSI command in a discovery session")
	}
	cdb := cmd.CDB[:]
	if len(ahs) > 0 {
		segs, err := pdu.ParseAHS(ahs)
		if err != nil {
			c.rd.DiscardData(h)
			return c.protocolError(h, pdu.RejectInvalidPDUField, err.Error())
		}
		for _, a := range segs {
			if a.Type == pdu.AHSExtendedCDB && len(a.Data) > 0 {
				cdb = append(cdb[:16:16], a.Data[1:]...)
			}
		}
	}
	switch c.sess.admit(cmd.CmdSN, cmd.Immediate, true) {
	case outsideWindow:
		c.log.Debug("iscsi: command outside the CmdSN window ignored", "cmdsn", cmd.CmdSN, "itt", cmd.ITT)
		return c.ignore(h)
	case tooManyImmediate:
		c.log.Debug("iscsi: immediate command beyond the allowance rejected", "itt", cmd.ITT, "allowance", ImmediateCommands)
		c.reject(h, pdu.RejectImmediateRejected)
		return c.ignore(h)
	}
	edtl := cmd.ExpectedDataTransferLength
	var why string
	switch {
	case dsl > 0 && !cmd.Write:
		why = "immediate data on a command that is not a write"
	case dsl > 0 && !c.params.ImmediateData:
		why = "immediate data although ImmediateData=No"
	case dsl > edtl:
		why = fmt.Sprintf("immediate data (%d bytes) beyond the expected length %d", dsl, edtl)
	case dsl > c.params.FirstBurstLength:
		why = fmt.Sprintf("immediate data (%d bytes) beyond FirstBurstLength %d", dsl, c.params.FirstBurstLength)
	case cmd.Write && !cmd.Final && c.params.InitialR2T:
		why = "unsolicited data announced although InitialR2T=Yes"
	}
	c.mu.Lock()
	_, dup := c.tasks[cmd.ITT]
	c.mu.Unlock()
	if dup {
		why = fmt.Sprintf("initiator task tag 0x%x already in use", cmd.ITT)
	}
	if why != "" {
		c.sess.taskDone(cmd.Immediate)
		reason := uint8(pdu.RejectProtocolError)
		if dup {
			reason = pdu.RejectTaskInProgress
		}
		c.noteRejected("iscsi: rejecting command", "itt", cmd.ITT, "why", why)
		c.reject(h, reason)
		return c.ignore(h)
	}

	ctx, cancel := context.WithCancel(c.ctx)
	t := &task{owner: c, cmd: cmd, cdb: cdb, lun: decodeLUN(cmd.LUN), ctx: ctx, cancel: cancel,
		done: make(chan struct{}), ended: make(chan struct{}), immediate: cmd.Immediate, holdsSlot: true}
	if edtl > c.srv.cfg.MaxTransferLength {
		// No initiator that reads VPD 0xB0 asks for this much.
		c.rd.DiscardData(h)
		return c.finishEarly(t, scsi.StatusCheckCondition, invalidFieldInCDB)
	}
	if edtl > 0 && (cmd.Write || cmd.Read) {
		t.budget = int64(edtl)
		if !c.srv.buffers.tryAcquire(&c.sess.account.buffered, t.budget) {
			t.budget = 0
			c.rd.DiscardData(h)
			return c.finishEarly(t, scsi.StatusTaskSetFull, nil)
		}
	}
	c.mu.Lock()
	c.tasks[cmd.ITT] = t
	c.mu.Unlock()
	if !cmd.Write || edtl == 0 {
		if err := c.rd.DiscardData(h); err != nil {
			return err
		}
		if cmd.Read && edtl > 0 {
			t.readBuf = c.srv.pool.get(int(edtl))
		}
		c.startTask(t)
		return nil
	}
	t.buf = c.srv.pool.get(int(edtl))
	if err := c.rd.ReadData(h, t.buf[:dsl]); err != nil {
		if errors.Is(err, pdu.ErrDataDigest) {
			return c.protocolError(h, pdu.RejectDataDigest, err.Error())
		}
		return err
	}
	t.received = dsl
	firstBurst := min(edtl, c.params.FirstBurstLength)
	if cmd.Final {
		if dsl < edtl {
			t.pending = append(t.pending, region{dsl, edtl - dsl})
		}
	} else {
		t.unsol = &dataSeq{ttt: 0xffffffff, next: dsl, end: firstBurst}
		if firstBurst < edtl {
			t.pending = append(t.pending, region{firstBurst, edtl - firstBurst})
		}
	}
	c.issueR2Ts(t)
	if t.complete() {
		c.startTask(t)
	}
	return nil
}

// Fixed-format sense for INVALID FIELD IN CDB, used when the transport
// itself refuses a command.
var invalidFieldInCDB = []byte{0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0}

// dataPhaseError is ABORTED COMMAND sense with an iSCSI data-phase ASC
// (RFC 7143 §11.4.7.2).
func dataPhaseError(asc uint16) []byte {
	s := append([]byte(nil), invalidFieldInCDB...)
	s[2], s[12], s[13] = 0x0b, byte(asc>>8), byte(asc)
	return s
}

// finishEarly completes a command that never reaches the SCSI layer.
func (c *conn) finishEarly(t *task, status scsi.Status, sense []byte) error {
	t.res = scsi.Result{Status: status, Sense: sense}
	c.mu.Lock()
	c.tasks[t.cmd.ITT] = t
	c.mu.Unlock()
	t.state = taskExecuting
	c.send(outItem{kind: outTaskResult, t: t})
	return nil
}

// issueR2Ts requests pending write data, keeping at most MaxOutstandingR2T
// R2Ts open, each for at most MaxBurstLength bytes.
func (c *conn) issueR2Ts(t *task) {
	for len(t.r2ts) < int(c.params.MaxOutstandingR2T) && len(t.pending) > 0 {
		reg := &t.pending[0]
		n := min(reg.len, c.params.MaxBurstLength)
		c.mu.Lock()
		ttt := c.newTTT()
		c.mu.Unlock()
		t.r2ts = append(t.r2ts, &dataSeq{ttt: ttt, next: reg.off, end: reg.off + n})
		it := outItem{kind: outR2T}
		(&pdu.R2T{LUN: t.cmd.LUN, ITT: t.cmd.ITT, TTT: ttt, R2TSN: t.r2tSN, BufferOffset: reg.off, DesiredLength: n}).Marshal(&it.hdr)
		t.r2tSN++
		reg.off += n
		reg.len -= n
		if reg.len == 0 {
			t.pending = t.pending[1:]
		}
		c.send(it)
	}
}

func (c *conn) handleDataOut(h *pdu.Header) error {
	var m pdu.DataOut
	m.Unmarshal(h)
	n := uint32(h.DataSegmentLength())
	c.mu.Lock()
	t := c.tasks[m.ITT]
	c.mu.Unlock()
	if t == nil || t.state != taskGathering {
		// The command was rejected, aborted or ignored; its data is moot.
		c.log.Debug("iscsi: Data-Out for no waiting task discarded", "itt", m.ITT)
		return c.ignore(h)
	}
	var seq *dataSeq
	idx := -1
	if m.TTT == 0xffffffff {
		seq = t.unsol
	} else {
		for i, s := range t.r2ts {
			if s.ttt == m.TTT {
				seq, idx = s, i
				break
			}
		}
	}
	var asc uint16
	var why string
	switch {
	case seq == nil:
		asc, why = 0x4b01, fmt.Sprintf("Data-Out with unknown TTT 0x%x", m.TTT)
	case m.DataSN != seq.nextDataSN:
		asc, why = 0x4b00, fmt.Sprintf("Data-Out DataSN %d, expected %d", m.DataSN, seq.nextDataSN)
	case m.BufferOffset != seq.next || m.BufferOffset+n > seq.end || m.BufferOffset+n < m.BufferOffset:
		asc, why = 0x4b05, fmt.Sprintf("Data-Out offset %d length %d, expected offset %d up to %d", m.BufferOffset, n, seq.next, seq.end)
	}
	if asc != 0 {
		// The command cannot complete; it ends with CHECK CONDITION and
		// the connection carries on. Later Data-Out for it is discarded.
		if err := c.rd.DiscardData(h); err != nil {
			return err
		}
		c.log.Info("iscsi: failing command after a Data-Out sequence error", "itt", m.ITT, "why", why)
		t.res = scsi.Result{Status: scsi.StatusCheckCondition, Sense: dataPhaseError(asc)}
		t.state = taskExecuting
		c.send(outItem{kind: outTaskResult, t: t})
		return nil
	}
	if err := c.rd.ReadData(h, t.buf[m.BufferOffset:m.BufferOffset+n]); err != nil {
		if errors.Is(err, pdu.ErrDataDigest) {
			return c.protocolError(h, pdu.RejectDataDigest, err.Error())
		}
		return err
	}
	seq.next += n
	seq.nextDataSN++
	t.received += n
	if m.Final {
		if idx < 0 {
			// The initiator may send less unsolicited data than allowed;
			// ask for the rest with R2T.
			if seq.next < seq.end {
				t.pending = append([]region{{seq.next, seq.end - seq.next}}, t.pending...)
			}
			t.unsol = nil
		} else {
			if seq.next != seq.end {
				return c.protocolError(h, pdu.RejectProtocolError, fmt.Sprintf("R2T sequence ended at %d, expected %d", seq.next, seq.end))
			}
			t.r2ts = append(t.r2ts[:idx], t.r2ts[idx+1:]...)
		}
		c.issueR2Ts(t)
	}
	if t.complete() {
		c.startTask(t)
	}
	return nil
}

// startTask hands a command to the SCSI layer in a goroutine of its own,
// or runs it on the reader goroutine when it is small and alone (inline.go).
func (c *conn) startTask(t *task) {
	t.state = taskExecuting
	if c.mayRunInline(t) && c.runInline(t) {
		return
	}
	c.goRun(t)
}

// goRun runs t on a task worker, a goroutine of the connection's that
// hands its result to the writer: one waiting for work if there is one,
// else a new one. Reader goroutine only.
//
// Workers outlive their task because a fresh goroutine per command grew
// its stack on every command (the SCSI layer and a mirrored device's
// write path run deep): at queue depth 32 on a mirrored volume, stack
// copying took about a tenth of the primary's CPU. A worker keeps its
// grown stack; one idle for workerIdle exits, so a burst leaves no
// goroutines behind. There are never more workers than commands once
// running at the same time, which the session's command window bounds.
func (c *conn) goRun(t *task) {
	select {
	case c.idle <- t:
		return
	default:
	}
	c.wg.Add(1)
	go c.worker(t)
}

// workerIdle is how long a task worker waits for another task.
const workerIdle = 5 * time.Second

func (c *conn) worker(t *task) {
	defer c.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		c.run(t, false)
		c.send(outItem{kind: outTaskResult, t: t})
		idle.Reset(workerIdle)
		select {
		case t = <-c.idle:
		case <-idle.C:
			return
		case <-c.ctx.Done():
			return
		}
	}
}

// run executes t on either path. A task aborted before it starts (by a
// reset or PREEMPT AND ABORT from another connection while it gathered
// data) never executes: claimRun and the aborter's fence decide that
// atomically. With noWait (the reader's own goroutine), a command that
// would wait for another's claim on its blocks does nothing and run
// returns false: the task stays claimed, its ended open, and must be run
// again without noWait.
func (c *conn) run(t *task, noWait bool) bool {
	if t.claimed || t.fate.Load() != fateAborted && t.claimRun() {
		t.claimed = true
		return c.execute(t, noWait)
	}
	return true
}

// execute runs a claimed task. For PREEMPT AND ABORT it then aborts the
// preempted nexuses' tasks and waits until none of them can touch the
// device any more, so that the status, sent after it returns, tells the
// preempting host that the fence is in place (SPC-4 §5.13.11.2.4): a
// preempted host's write must not reach the disk after it. The task's own
// ended is closed before that wait, so fences never wait for each other.
// It returns false, having done nothing, for a noWait command that would
// have waited (ended stays open).
func (c *conn) execute(t *task, noWait bool) bool {
	sc := scsi.Command{
		Nexus: c.sess.nexus, LUN: t.lun, CDB: t.cdb, ExpectedLength: t.cmd.ExpectedDataTransferLength,
		DataOut: t.buf[:t.received], Buf: t.readBuf, MaySend: c.maySend, NoWait: noWait,
	}
	res := c.sess.target.cfg.SCSI.Execute(t.ctx, &sc)
	if res.Busy {
		return false
	}
	t.res = res
	close(t.ended)
	if len(t.res.AbortNexuses) == 0 {
		return true
	}
	n, fences := c.srv.abortTasksOf(c.sess.target, t.lun, t.res.AbortNexuses, t)
	start := time.Now()
	if waitFences(c.ctx, fences) {
		c.log.Info("iscsi: PREEMPT AND ABORT aborted the preempted initiators' tasks", "lun", t.lun, "aborted", n,
			"waited", time.Since(start))
	}
	return true
}

// waitFences waits until every channel is closed, or ctx is done; it
// reports whether they all closed.
func waitFences(ctx context.Context, fences []<-chan struct{}) bool {
	for _, f := range fences {
		select {
		case <-f:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// completeTask frees a task once its response was sent (or dropped).
func (c *conn) completeTask(t *task) {
	c.mu.Lock()
	if c.tasks[t.cmd.ITT] == t {
		delete(c.tasks, t.cmd.ITT)
	}
	c.mu.Unlock()
	c.releaseTask(t)
}

func (c *conn) releaseTask(t *task) {
	t.cancel()
	if t.buf != nil {
		c.srv.pool.put(t.buf)
		t.buf = nil
	}
	if t.readBuf != nil {
		c.srv.pool.put(t.readBuf)
		t.readBuf = nil
	}
	if t.budget > 0 {
		c.srv.buffers.release(&c.sess.account.buffered, t.budget)
		t.budget = 0
	}
	c.freeSlot(t)
	close(t.done)
}

// freeSlot frees t's command slot, once: when its status is sent, so that
// the status already advertises the slot as free in MaxCmdSN, or when the
// task is released without one.
func (c *conn) freeSlot(t *task) {
	if t.holdsSlot {
		t.holdsSlot = false
		c.sess.taskDone(t.immediate)
	}
}

func (c *conn) handleNOPOut(h *pdu.Header) error {
	var m pdu.NOPOut
	m.Unmarshal(h)
	if m.ITT == 0xffffffff {
		// The answer to our NOP-In ping.
		if err := c.rd.DiscardData(h); err != nil {
			return err
		}
		c.mu.Lock()
		if m.TTT == c.nopTTT {
			c.nopTTT = 0
		}
		c.mu.Unlock()
		return nil
	}
	if c.sess.admit(m.CmdSN, m.Immediate, false) != admitted {
		return c.ignore(h)
	}
	data, err := c.readData(h)
	if err != nil {
		return err
	}
	if max := int(c.params.MaxRecvDataSegmentLength); len(data) > max {
		data = data[:max]
	}
	c.sendReply(&pdu.NOPIn{LUN: m.LUN, ITT: m.ITT, TTT: 0xffffffff}, data)
	return nil
}

func (c *conn) handleText(h *pdu.Header) error {
	var m pdu.TextRequest
	m.Unmarshal(h)
	if c.sess.admit(m.CmdSN, m.Immediate, false) != admitted {
		return c.ignore(h)
	}
	data, err := c.readData(h)
	if err != nil {
		return err
	}
	mrdsl := int(c.params.MaxRecvDataSegmentLength)
	if m.TTT != 0xffffffff {
		// The initiator asks for the next piece of a long answer.
		if m.TTT != c.pendingTextTTT || c.pendingText == nil {
			return c.protocolError(h, pdu.RejectProtocolError, fmt.Sprintf("Text Request with unknown TTT 0x%x", m.TTT))
		}
		c.sendText(&m, mrdsl)
		return nil
	}
	c.pendingText = nil
	if len(c.accumulatedText)+len(data) > maxLoginText {
		c.accumulatedText = nil
		return c.protocolError(h, pdu.RejectProtocolError, "text request too long")
	}
	c.accumulatedText = append(c.accumulatedText, data...)
	if m.Continue {
		c.mu.Lock()
		ttt := c.newTTT()
		c.mu.Unlock()
		c.sendPDU(&pdu.TextResponse{LUN: m.LUN, ITT: m.ITT, TTT: ttt}, nil, true)
		return nil
	}
	text := c.accumulatedText
	c.accumulatedText = nil
	pairs, err := login.ParseText(text)
	if err != nil {
		c.log.Info("iscsi: malformed text request", "err", err)
		c.reject(h, pdu.RejectProtocolError)
		return nil
	}
	var reply []login.Pair
	var rest []login.Pair
	for _, p := range pairs {
		if p.Key == "SendTargets" {
			reply = append(reply, c.sendTargets(p.Value)...)
		} else {
			rest = append(rest, p)
		}
	}
	if len(rest) > 0 {
		params := c.params
		more, err := login.NegotiateFullFeature(&params, rest)
		if err != nil {
			c.log.Info("iscsi: text negotiation refused", "err", err)
			c.reject(h, pdu.RejectProtocolError)
			return nil
		}
		reply = append(reply, more...)
	}
	c.pendingText = login.AppendText(nil, reply)
	c.sendText(&m, mrdsl)
	return nil
}

// sendText sends the next piece of c.pendingText.
func (c *conn) sendText(m *pdu.TextRequest, mrdsl int) {
	out := c.pendingText
	resp := pdu.TextResponse{LUN: m.LUN, ITT: m.ITT, TTT: 0xffffffff, Final: true}
	if len(out) > mrdsl {
		c.mu.Lock()
		resp.TTT = c.newTTT()
		c.mu.Unlock()
		resp.Final, resp.Continue = false, true
		c.pendingText, c.pendingTextTTT = out[mrdsl:], resp.TTT
		out = out[:mrdsl]
	} else {
		c.pendingText = nil
	}
	c.sendReply(&resp, out)
}

// sendTargets answers a SendTargets key (RFC 7143 Appendix C) with the
// portal the initiator reached. A discovery session may ask for All;
// a normal session learns only about its own target.
func (c *conn) sendTargets(value string) []login.Pair {
	local := c.nc.LocalAddr()
	portal := fmt.Sprintf("%s,%d", local.String(), c.srv.targetPort().PortalGroupTag)
	var names []string
	switch {
	case c.sess.target != nil && (value == "" || value == c.sess.target.cfg.Name):
		names = []string{c.sess.target.cfg.Name}
	case c.sess.target != nil:
		return nil
	case value == "All":
		names = c.srv.visibleTargets(c.sess.initiator)
	default:
		for _, n := range c.srv.visibleTargets(c.sess.initiator) {
			if n == value {
				names = append(names, n)
			}
		}
	}
	var out []login.Pair
	for _, n := range names {
		out = append(out, login.Pair{Key: "TargetName", Value: n})
		addrs := c.srv.addressesOf(n, local)
		if len(addrs) == 0 {
			addrs = []string{portal}
		}
		for _, a := range addrs {
			out = append(out, login.Pair{Key: "TargetAddress", Value: a})
		}
	}
	return out
}

func (c *conn) handleLogout(h *pdu.Header) error {
	var m pdu.LogoutRequest
	m.Unmarshal(h)
	if err := c.rd.DiscardData(h); err != nil {
		return err
	}
	if c.sess.admit(m.CmdSN, m.Immediate, false) != admitted {
		return c.charge(0)
	}
	resp := pdu.LogoutResponse{ITT: m.ITT}
	switch m.Reason {
	case pdu.LogoutCloseSession:
	case pdu.LogoutCloseConnection:
		if m.CID != c.cid {
			resp.Response = pdu.LogoutCIDNotFound
		}
	default:
		resp.Response = pdu.LogoutRecoveryNotSupport
	}
	if resp.Response != pdu.LogoutSuccess {
		c.sendPDU(&resp, nil, true)
		return nil
	}
	c.waitTasks(10 * time.Second)
	c.sendPDU(&resp, nil, true)
	c.send(outItem{kind: outClose})
	select {
	case <-c.writerDone:
	case <-time.After(5 * time.Second):
	}
	return errLogout
}

// waitTasks waits until no command is in flight, or for at most d.
func (c *conn) waitTasks(d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		var wait chan struct{}
		for _, t := range c.tasks {
			if t.state == taskExecuting {
				wait = t.done
				break
			}
		}
		c.mu.Unlock()
		if wait == nil {
			return
		}
		select {
		case <-wait:
		case <-time.After(time.Until(deadline)):
		}
	}
}
