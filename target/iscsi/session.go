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

	mu       sync.Mutex // protects expCmdSN, inflight, conn
	expCmdSN uint32
	inflight uint32
	conn     *conn

	closeOnce sync.Once
	closed    chan struct{} // closed when the session has ended
}

func (s *session) markClosed() { s.closeOnce.Do(func() { close(s.closed) }) }

// waitClosed waits for the session's connection to end.
func (s *session) waitClosed() { <-s.closed }

// window returns ExpCmdSN and MaxCmdSN for the next PDU sent.
func (s *session) window() (exp, max uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expCmdSN, s.expCmdSN + s.depth - 1 - s.inflight
}

// acceptCmdSN applies the command window to a non-immediate command
// (RFC 7143 §4.2.2.1). A command outside the window is silently ignored; the
// only in-window value on a single connection is ExpCmdSN itself. With task,
// the command occupies a slot until its response is sent.
func (s *session) acceptCmdSN(cmdSN uint32, immediate, task bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if immediate {
		if task {
			s.inflight++
		}
		return true
	}
	if cmdSN != s.expCmdSN {
		return false
	}
	s.expCmdSN++
	if task {
		s.inflight++
	}
	return true
}

// taskDone frees a command window slot.
func (s *session) taskDone() {
	s.mu.Lock()
	s.inflight--
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

func (s *session) connClosed(c *conn) {
	s.mu.Lock()
	if s.conn == c {
		s.conn = nil
	}
	s.mu.Unlock()
	s.srv.removeSession(s)
	if s.target != nil {
		s.target.cfg.SCSI.NexusLost(s.nexus)
	}
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
