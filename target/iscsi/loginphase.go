package iscsi

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"tandem.io/tandem/target/iscsi/login"
	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
)

const (
	// loginTimeout bounds the whole login phase.
	loginTimeout = 30 * time.Second
	// maxLoginText bounds the text keys of one login request, reassembled.
	maxLoginText = 64 << 10
	// loginSegment is the data segment limit both sides use during login.
	loginSegment = 8192
)

var errLoginFailed = errors.New("login failed")

// login runs the login phase (RFC 7143 §6): it reassembles Login Requests,
// feeds them to the login state machine and sends its answers. On success
// c.sess and c.params are set and the connection is in full-feature phase.
func (c *conn) login() error {
	c.nc.SetDeadline(time.Now().Add(loginTimeout))
	defer c.nc.SetDeadline(time.Time{})
	w := pdu.Writer{Dst: c.nc}
	m := login.New(login.Config{
		Lookup:                   func(name string) (login.TargetInfo, bool) { return c.srv.lookupTarget(name, c.nc.LocalAddr()) },
		PortalGroupTag:           c.srv.targetPort().PortalGroupTag,
		MaxRecvDataSegmentLength: c.srv.cfg.MaxRecvDataSegmentLength,
	})
	var (
		first  pdu.LoginRequest
		seen   bool
		text   []byte
		statSN uint32
	)
	respond := func(req *pdu.LoginRequest, r login.Response, tsih uint16, data []byte, cont bool) error {
		m := pdu.LoginResponse{
			Transit: r.Transit && !cont, Continue: cont, CSG: uint8(r.CSG), NSG: uint8(r.NSG),
			ISID: first.ISID, TSIH: tsih, ITT: req.ITT, StatSN: statSN,
			ExpCmdSN: first.CmdSN, MaxCmdSN: first.CmdSN + c.srv.cfg.QueueDepth - 1,
			StatusClass: r.StatusClass, StatusDetail: r.StatusDetail,
		}
		if !m.Transit {
			m.NSG = 0
		}
		var h pdu.Header
		m.Marshal(&h)
		statSN++
		if err := w.WritePDU(&h, data); err != nil {
			return err
		}
		return w.Flush()
	}
	readReq := func(req *pdu.LoginRequest) ([]byte, error) {
		var h pdu.Header
		if _, err := c.rd.ReadHeader(&h); err != nil {
			return nil, err
		}
		if h.Opcode() != pdu.OpLoginReq {
			return nil, fmt.Errorf("%w: %v during login", errLoginFailed, h.Opcode())
		}
		req.Unmarshal(&h)
		data := make([]byte, h.DataSegmentLength())
		if err := c.rd.ReadData(&h, data); err != nil {
			return nil, err
		}
		c.lastRecv.Store(time.Now().UnixNano())
		return data, nil
	}
	fail := func(req *pdu.LoginRequest, class, detail uint8, why string) error {
		respond(req, login.Response{CSG: login.Stage(req.CSG), StatusClass: class, StatusDetail: detail}, 0, nil, false)
		return fmt.Errorf("%w: %s", errLoginFailed, why)
	}
	for {
		var req pdu.LoginRequest
		data, err := readReq(&req)
		if err != nil {
			return err
		}
		if !seen {
			seen, first, statSN = true, req, req.ExpStatSN
			if req.TSIH != 0 {
				// Adding a connection to a session (MC/S) is not offered:
				// MaxConnections is negotiated to 1.
				if c.srv.sessionByTSIH(req.TSIH) == nil {
					return fail(&req, 2, 0x0a, fmt.Sprintf("TSIH %d names no session", req.TSIH))
				}
				return fail(&req, 2, 0x06, "a session may have only one connection")
			}
		} else if req.ISID != first.ISID || req.TSIH != first.TSIH {
			return fail(&req, 2, 0x00, "ISID or TSIH changed during login")
		}
		if len(text)+len(data) > maxLoginText {
			return fail(&req, 2, 0x00, fmt.Sprintf("login text longer than %d bytes", maxLoginText))
		}
		text = append(text, data...)
		if req.Continue {
			// Ask for the rest of the text (§6.2): an empty response.
			if err := respond(&req, login.Response{CSG: login.Stage(req.CSG)}, 0, nil, false); err != nil {
				return err
			}
			continue
		}
		resp := m.Step(login.Request{
			Transit: req.Transit, CSG: login.Stage(req.CSG), NSG: login.Stage(req.NSG),
			VersionMax: req.VersionMax, VersionMin: req.VersionMin, ISID: req.ISID, TSIH: req.TSIH, Text: text,
		})
		text = text[:0]
		var tsih uint16
		if m.Done() {
			sess, err := c.srv.newSession(c, m.Result(), first.ISID, first.CmdSN)
			if err != nil {
				return fail(&req, 3, 0x02, err.Error())
			}
			tsih = sess.tsih
		}
		// A long answer goes out in pieces of loginSegment bytes, each
		// acknowledged by an empty request (§6.2).
		out := resp.Text
		for len(out) > loginSegment {
			if err := respond(&req, resp, 0, out[:loginSegment], true); err != nil {
				return err
			}
			out = out[loginSegment:]
			if data, err := readReq(&req); err != nil {
				return err
			} else if len(data) != 0 || req.Continue {
				return fail(&req, 2, 0x00, "text sent while the target was continuing its answer")
			}
		}
		if err := respond(&req, resp, tsih, out, false); err != nil {
			return err
		}
		if m.Failed() {
			return fmt.Errorf("%w: status %d/%02x for initiator %q", errLoginFailed, resp.StatusClass, resp.StatusDetail, m.Result().InitiatorName)
		}
		if m.Done() {
			c.params = m.Result().Params
			c.statSN = statSN
			c.rd.HeaderDigest = c.params.HeaderDigest
			c.rd.DataDigest = c.params.DataDigest
			c.rd.MaxDataSegmentLength = int(c.params.TargetMaxRecvDataSegmentLength)
			c.cid = first.CID
			_, isSyscallConn := c.nc.(syscall.Conn)
			c.maySend = isSyscallConn && !c.params.DataDigest
			c.log = c.log.With("initiator", c.sess.initiator, "target", c.sess.key.target)
			c.log.Info("iscsi login", "tsih", c.sess.tsih, "header_digest", c.params.HeaderDigest,
				"data_digest", c.params.DataDigest, "discovery", c.sess.target == nil)
			return nil
		}
	}
}

// lookupTarget finds a target for the login state machine.
func (s *Server) lookupTarget(name string, local net.Addr) (login.TargetInfo, bool) {
	s.mu.Lock()
	t, ok := s.targets[name]
	s.mu.Unlock()
	if !ok {
		return login.TargetInfo{}, false
	}
	a := t.cfg.Auth
	if t.cfg.Unavailable != "" {
		s.log.Warn("iscsi login refused: the target cannot be served", "target", name, "why", t.cfg.Unavailable)
	}
	redirect := ""
	if r := t.redirectFor(local); r != "" {
		redirect = s.withTag(r)
	}
	return login.TargetInfo{Name: t.cfg.Name, Alias: t.cfg.Alias, Unavailable: t.cfg.Unavailable != "", Redirect: redirect, Auth: login.Auth{
		CHAPUser: a.CHAPUser, CHAPSecret: a.CHAPSecret, MutualUser: a.MutualUser, MutualSecret: a.MutualSecret,
		AllowedInitiators: a.AllowedInitiators,
	}}, true
}

// newSession registers the session a successful login creates, replacing
// an older session of the same initiator port (reinstatement).
func (s *Server) newSession(c *conn, r login.Result, isid [6]byte, cmdSN uint32) (*session, error) {
	key := sessionKey{initiator: r.InitiatorName, isid: isid}
	var t *target
	if r.SessionType == login.SessionNormal {
		key.target = r.TargetName
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrServerClosed
	}
	if key.target != "" {
		t = s.targets[key.target]
		if t == nil {
			s.mu.Unlock()
			return nil, fmt.Errorf("target %q was removed during login", key.target)
		}
	}
	// Reinstatement (§6.3.5): the old session of this initiator port ends
	// before the new one counts. Two logins may reinstate at once: each
	// waits for whatever holds the key until it finds it free, so the
	// later one also ends the earlier one's new session, and no session
	// is ever left outside s.sessions.
	for {
		old := s.sessions[key]
		if old == nil {
			break
		}
		s.mu.Unlock()
		c.log.Info("iscsi session reinstatement: closing the old session", "initiator", r.InitiatorName, "tsih", old.tsih)
		old.close("reinstated by a new login")
		old.waitClosed()
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrServerClosed
		}
	}
	defer s.mu.Unlock()
	if len(s.sessions) >= s.cfg.MaxSessions {
		return nil, fmt.Errorf("too many sessions (%d)", s.cfg.MaxSessions)
	}
	tsih := s.allocTSIH()
	sess := &session{
		srv: s, key: key, initiator: r.InitiatorName, isid: isid, tsih: tsih, target: t,
		since: time.Now(), depth: s.cfg.QueueDepth, expCmdSN: cmdSN, conn: c, closed: make(chan struct{}),
	}
	if t != nil {
		p := s.targetPort()
		sess.nexus = scsi.Nexus{
			InitiatorPort:  scsi.IPortName(r.InitiatorName, isid),
			TargetPort:     fmt.Sprintf("%s,t,0x%x", t.cfg.Name, p.PortalGroupTag),
			RelativePortID: p.RelativePortID,
			PortGroup:      p.PortGroup,
		}
	}
	name := strings.ToLower(r.InitiatorName)
	acct := s.accounts[name]
	if acct == nil {
		acct = &account{}
		s.accounts[name] = acct
	}
	acct.sessions++
	sess.account = acct
	s.sessions[key] = sess
	c.sess = sess
	return sess, nil
}

// allocTSIH returns a TSIH no live session uses; s.mu must be held.
func (s *Server) allocTSIH() uint16 {
	for {
		s.nextTSIH++
		if s.nextTSIH == 0 {
			continue
		}
		if s.sessionByTSIHLocked(s.nextTSIH) == nil {
			return s.nextTSIH
		}
	}
}

func (s *Server) sessionByTSIH(tsih uint16) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessionByTSIHLocked(tsih)
}

func (s *Server) sessionByTSIHLocked(tsih uint16) *session {
	for _, ss := range s.sessions {
		if ss.tsih == tsih {
			return ss
		}
	}
	return nil
}

func (s *Server) removeSession(ss *session) {
	s.mu.Lock()
	if s.sessions[ss.key] == ss {
		delete(s.sessions, ss.key)
		if a := ss.account; a != nil {
			if a.sessions--; a.sessions == 0 {
				delete(s.accounts, strings.ToLower(ss.initiator))
			}
		}
	}
	s.mu.Unlock()
	ss.markClosed()
}
