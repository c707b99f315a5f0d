package iscsi

import (
	"log/slog"
	"slices"
	"time"

	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
)

// handleTMF carries out a task management function (RFC 7143 §11.5). Tasks
// still gathering data are dropped at once on the reader goroutine (or, on
// other connections, barred from ever executing); tasks executing are
// cancelled, and the response is sent only after every victim, on any
// connection, has stopped touching the device, and this connection's own
// victims are released, so that no response for an aborted task follows it.
func (c *conn) handleTMF(h *pdu.Header) error {
	var m pdu.TaskMgmtRequest
	m.Unmarshal(h)
	if err := c.rd.DiscardData(h); err != nil {
		return err
	}
	exp, _ := c.sess.window()
	if c.sess.admit(m.CmdSN, m.Immediate, false) != admitted {
		return c.charge(0)
	}
	resp := pdu.TaskMgmtResponse{ITT: m.ITT, Response: pdu.TMFComplete}
	lun := decodeLUN(m.LUN)
	scsiTarget := c.sess.target
	if scsiTarget == nil {
		resp.Response = pdu.TMFRejected
		c.sendPDU(&resp, nil, true)
		return nil
	}
	lunExists := false
	for _, l := range scsiTarget.cfg.SCSI.LUNs() {
		if l == lun {
			lunExists = true
		}
	}
	var victims []*task
	var closeSessions bool
	var reset func() error // the reset itself, once its victims are aborted
	switch m.Function {
	case pdu.TMFAbortTask:
		c.mu.Lock()
		t := c.tasks[m.ReferencedTaskTag]
		c.mu.Unlock()
		switch {
		case t != nil && t.lun == lun:
			victims = []*task{t}
		case t != nil:
			resp.Response = pdu.TMFTaskDoesNotExist
		case !serialLess(m.RefCmdSN, exp) && serialLess(m.RefCmdSN, m.CmdSN):
			// In the window but not received yet: it counts as received
			// and aborted (RFC 7143 §11.5.1 b).
			resp.Response = pdu.TMFComplete
		default:
			resp.Response = pdu.TMFTaskDoesNotExist
		}
	case pdu.TMFAbortTaskSet, pdu.TMFClearTaskSet:
		if !lunExists {
			resp.Response = pdu.TMFLUNDoesNotExist
			break
		}
		victims = c.tasksOn(lun, true)
	case pdu.TMFClearACA:
		// NACA is never accepted, so there is no ACA to clear.
		if !lunExists {
			resp.Response = pdu.TMFLUNDoesNotExist
		}
	case pdu.TMFLogicalUnitReset:
		if !lunExists {
			resp.Response = pdu.TMFLUNDoesNotExist
			break
		}
		victims = c.srv.tasksOfTarget(scsiTarget, lun, true)
		reset = func() error { return scsiTarget.cfg.SCSI.LUNReset(c.sess.nexus, lun) }
	case pdu.TMFTargetWarmReset, pdu.TMFTargetColdReset:
		victims = c.srv.tasksOfTarget(scsiTarget, 0, false)
		cold := m.Function == pdu.TMFTargetColdReset
		reset = func() error { return scsiTarget.cfg.SCSI.TargetReset(c.sess.nexus, cold) }
		closeSessions = cold
	case pdu.TMFTaskReassign:
		resp.Response = pdu.TMFReassignNotSupported
	default:
		resp.Response = pdu.TMFRejected
	}
	// The response waits for two things. Every victim, on any
	// connection, must be unable to touch the device (its fence): a host
	// told that a reset or abort is done must not see an aborted write
	// land afterwards. And this connection's own victims must be released
	// (done), so that the initiator may reuse their task tags.
	var waits []<-chan struct{}
	for _, t := range victims {
		if !t.abort() {
			// Its response is already on the way: it has executed.
			if m.Function == pdu.TMFAbortTask {
				resp.Response = pdu.TMFTaskDoesNotExist
			}
			continue
		}
		if f := t.fence(); f != nil {
			waits = append(waits, f)
		}
		if t.owner != c {
			// Another connection's task: its reader state is not ours
			// to touch; its connection releases it.
			continue
		}
		if t.state == taskGathering {
			c.completeTask(t)
			continue
		}
		waits = append(waits, t.done)
	}
	// Only now the reset and its unit attentions: a victim that had not
	// started executing must not run after the reset, see its unit
	// attention and answer with it instead of being aborted.
	if reset != nil {
		if err := reset(); err != nil {
			c.log.Warn("iscsi: reset failed", "function", m.Function, "lun", lun, "err", err)
			resp.Response = pdu.TMFRejected
		}
	}
	// At Info what changed something; a flood of requests that abort
	// nothing must not flood the log.
	level := slog.LevelDebug
	if len(victims) > 0 || reset != nil {
		level = slog.LevelInfo
	}
	c.log.Log(c.ctx, level, "iscsi task management", "function", m.Function, "lun", lun, "ref_itt", m.ReferencedTaskTag,
		"aborted", len(victims), "response", resp.Response)
	select {
	case c.tmfSlots <- struct{}{}:
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.tmfSlots }()
		if !waitFences(c.ctx, waits) {
			return
		}
		c.sendPDU(&resp, nil, true)
		if closeSessions {
			// The response goes out before the connections close
			// (RFC 7143 §11.5.1).
			flushed := make(chan struct{})
			if c.send(outItem{kind: outFlush, flushed: flushed}) {
				select {
				case <-flushed:
				case <-c.ctx.Done():
				case <-time.After(5 * time.Second):
				}
			}
			c.srv.closeTargetSessions(scsiTarget, "target cold reset", false)
		}
	}()
	return nil
}

// tasksOn lists this connection's tasks on a LUN (or all, if !byLUN).
func (c *conn) tasksOn(lun uint64, byLUN bool) []*task {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*task
	for _, t := range c.tasks {
		if !byLUN || t.lun == lun {
			out = append(out, t)
		}
	}
	return out
}

// owner is recorded so that a task can be aborted from another connection's
// TMF (LUN and target resets).
func (s *Server) tasksOfTarget(t *target, lun uint64, byLUN bool) []*task {
	var out []*task
	for _, c := range s.connsOf(t, func(*session) bool { return true }) {
		out = append(out, c.tasksOn(lun, byLUN)...)
	}
	return out
}

// connsOf lists the connections of the target's sessions that match.
func (s *Server) connsOf(t *target, match func(*session) bool) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var conns []*conn
	for _, ss := range s.sessions {
		if ss.target == t && match(ss) {
			ss.mu.Lock()
			if ss.conn != nil {
				conns = append(conns, ss.conn)
			}
			ss.mu.Unlock()
		}
	}
	return conns
}

func serialLess(a, b uint32) bool { return a != b && (b-a) < 1<<31 }

// abortTasksOf aborts the tasks on a LUN of the target's sessions whose
// nexus is one of nexuses (initiator and target port), as ABORT TASK SET
// from each would: their responses are dropped. except, the aborting
// task, is spared. It returns how many it aborted and the fences to wait
// for before the aborter's status may go out.
func (s *Server) abortTasksOf(t *target, lun uint64, nexuses []scsi.Nexus, except *task) (int, []<-chan struct{}) {
	preempted := func(ss *session) bool {
		return slices.ContainsFunc(nexuses, func(n scsi.Nexus) bool {
			return n.InitiatorPort == ss.nexus.InitiatorPort && (n.TargetPort == "" || n.TargetPort == ss.nexus.TargetPort) // "": every port
		})
	}
	aborted := 0
	var fences []<-chan struct{}
	for _, c := range s.connsOf(t, preempted) {
		for _, tk := range c.tasksOn(lun, true) {
			if tk == except || !tk.abort() {
				continue
			}
			aborted++
			if f := tk.fence(); f != nil {
				fences = append(fences, f)
			}
		}
	}
	return aborted, fences
}
