package iscsi

import (
	"fmt"
	"sync"
	"time"

	"tandem.io/tandem/target/scsi"
)

// sessionKey identifies a session for reinstatement (RFC 7143 §6.3.5): the
// same initiator port logging in again to the same target replaces the old
// session.
type sessionKey struct {
	initiator string
	isid      [6]byte
	target    string
}

// A session is one logged-in I_T nexus. Tandem negotiates MaxConnections=1,
// so a session has exactly one connection and ends with it (error recovery
// level 0).
type session struct {
	srv       *Server
	key       sessionKey
	initiator string
	isid      [6]byte
	tsih      uint16
	target    *target // nil for a discovery session
	nexus     scsi.Nexus
	since     time.Time
	depth     uint32 // command window size: most commands in flight

	mu       sync.Mutex // protects expCmdSN, inflight, immediate, conn
	expCmdSN uint32
	// inflight counts the commands holding a window slot (at most depth);
	// immediate those holding an immediate-command slot (at most
	// ImmediateCommands).
	inflight, immediate uint32
	conn                *conn

	// account is the budget account of the session's initiator, shared by
	// all its sessions.
	account *account

	closeOnce sync.Once
	closed    chan struct{} // closed when the session has ended
}

func (s *session) markClosed() { s.closeOnce.Do(func() { close(s.closed) }) }

// waitClosed waits for the session's connection to end.
func (s *session) waitClosed() { <-s.closed }

// window returns ExpCmdSN and MaxCmdSN for the next PDU sent. With every
// slot taken MaxCmdSN is ExpCmdSN-1: the window is closed.
func (s *session) window() (exp, max uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expCmdSN, s.expCmdSN + s.depth - 1 - s.inflight
}

// admission is what becomes of a request under the command window.
type admission uint8

const (
	admitted admission = iota
	// outsideWindow: silently ignored (RFC 7143 §4.2.2.1).
	outsideWindow
	// tooManyImmediate: rejected with reason 0x06, "Immediate Command
	// Reject - too many immediate commands"; the initiator may resend it
	// (RFC 7143 §11.17.1).
	tooManyImmediate
)

// admit applies the command window (RFC 7143 §4.2.2.1) to a request. A
// non-immediate one is admitted only with CmdSN == ExpCmdSN (the only
// in-window value on a single connection) and only while the window is
// open: an initiator that ignores MaxCmdSN is ignored in turn. With task
// (a SCSI command), an admitted request holds a slot until its status is
// sent: a window slot, or for an immediate command, which does not
// advance CmdSN, one of ImmediateCommands immediate slots. Immediate
// requests that are not tasks (NOP-Out, Text, TMF, Logout) hold no slot;
// their cost is bounded where they are handled.
func (s *session) admit(cmdSN uint32, immediate, task bool) admission {
	s.mu.Lock()
	defer s.mu.Unlock()
	if immediate {
		if !task {
			return admitted
		}
		if s.immediate >= ImmediateCommands {
			return tooManyImmediate
		}
		s.immediate++
		return admitted
	}
	if cmdSN != s.expCmdSN || s.inflight >= s.depth {
		return outsideWindow
	}
	s.expCmdSN++
	if task {
		s.inflight++
	}
	return admitted
}

// taskDone frees a task's slot.
func (s *session) taskDone(immediate bool) {
	s.mu.Lock()
	if immediate {
		s.immediate--
	} else {
		s.inflight--
	}
	s.mu.Unlock()
}

func (s *session) close(reason string) {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c != nil {
		c.close(fmt.Errorf("session closed: %s", reason))
	}
}

// account is one initiator's holding of the buffer budget, shared by its
// sessions.
type account struct {
	buffered int64 // bytes of command buffers held; protected by budget.mu
	sessions int   // sessions using it; protected by Server.mu
}

func (s *session) connClosed(c *conn) {
	s.mu.Lock()
	if s.conn == c {
		s.conn = nil
	}
	s.mu.Unlock()
	// The nexus is forgotten (and copies writing through it stopped)
	// before the session counts as closed: whoever waits for it (close,
	// reinstatement) finds the nexus gone, and a new session of the same
	// initiator port does not lose its state to this one's end.
	if s.target != nil {
		s.target.cfg.SCSI.NexusLost(s.nexus)
	}
	s.srv.removeSession(s)
}

func (s *session) info() SessionInfo {
	si := SessionInfo{Initiator: s.initiator, ISID: fmt.Sprintf("%x", s.isid), TSIH: s.tsih, Since: s.since}
	if s.target != nil {
		si.Target = s.target.cfg.Name
	}
	s.mu.Lock()
	if s.conn != nil {
		si.Connections = []string{s.conn.nc.RemoteAddr().String()}
	}
	s.mu.Unlock()
	return si
}

// target is a served target.
type target struct {
	cfg TargetConfig
}
