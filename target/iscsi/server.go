package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tandem.io/tandem/target/iscsi/pdu"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("iscsi: server closed")

// ErrNoSuchTarget is returned for an unknown target name.
var ErrNoSuchTarget = errors.New("no such target")

// Server is an iSCSI target node: it accepts connections on one or more
// portals and serves the targets added to it. Create it with NewServer; stop
// it with Shutdown, which waits for every goroutine it started.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ctx     context.Context // parent of every connection's context
	cancel  context.CancelFunc
	pool    bufferPool
	buffers budget

	// port is this node's target port (SetTargetPort).
	port atomic.Pointer[TargetPort]

	mu        sync.Mutex // protects targets, listeners, conns, sessions, nextTSIH, closed
	targets   map[string]*target
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	sessions  map[sessionKey]*session
	accounts  map[string]*account // by lowercased initiator name
	nextTSIH  uint16
	closed    bool

	connWG sync.WaitGroup // one per connection goroutine
	// logins bounds the connections in the login phase (one slot each,
	// freed when login ends): connections that never log in cannot pile
	// up, each with its read buffer, for the login timeout.
	logins chan struct{}
}

// loginSlot takes a slot for a new connection's login phase. When all are
// taken, the connection that has been logging in the longest is closed to
// make room: a host holding idle connections open cannot lock every other
// initiator out of login (an initiator logs in within a round trip or two
// of connecting), while the number of connections logging in stays
// bounded. It reports false if no slot came free within a second.
func (s *Server) loginSlot() bool {
	select {
	case s.logins <- struct{}{}:
		return true
	default:
	}
	s.mu.Lock()
	var oldest *conn
	for c := range s.conns {
		if c.inLogin.Load() && (oldest == nil || c.accepted.Before(oldest.accepted)) {
			oldest = c
		}
	}
	s.mu.Unlock()
	if oldest != nil {
		oldest.close(errLoginEvicted)
	}
	select {
	case s.logins <- struct{}{}:
		return true
	case <-time.After(time.Second):
		return false
	}
}

// errLoginEvicted ends a connection still logging in when the login slots
// are all taken and a new connection needs one.
var errLoginEvicted = errors.New("logging in for longest while the login slots were full")

// maxLogins is how many connections may be in the login phase at once;
// beyond that the one logging in the longest makes room.
const maxLogins = 64

// NewServer returns a server with no targets.
func NewServer(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		ctx:       ctx,
		cancel:    cancel,
		buffers:   budget{max: cfg.BufferBudget, perInitiator: cfg.InitiatorBufferBudget},
		accounts:  make(map[string]*account),
		targets:   make(map[string]*target),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		sessions:  make(map[sessionKey]*session),
		logins:    make(chan struct{}, maxLogins),
	}
	srv.port.Store(&TargetPort{PortalGroupTag: cfg.TargetPortalGroupTag, RelativePortID: cfg.RelativePortID, PortGroup: cfg.TargetPortGroup})
	return srv, nil
}

// Serve accepts connections on ln until Shutdown. It always returns an
// error: ErrServerClosed after Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	var lastRefusal time.Time
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, errTemporary) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("iscsi: accept on %s: %w", ln.Addr(), err)
		}
		delay = 0
		if !s.loginSlot() {
			if time.Since(lastRefusal) > time.Second {
				s.log.Warn("iscsi: too many connections logging in; refusing new ones", "max", maxLogins, "remote", nc.RemoteAddr().String())
			}
			lastRefusal = time.Now()
			nc.Close()
			continue
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			tc.SetKeepAlive(true)
		}
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			<-s.logins
			nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.connWG.Done()
			c.serve()
		}()
	}
}

var errTemporary = errors.New("temporary")

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Shutdown stops accepting connections, asks every logged-in initiator to
// log out (Asynchronous Message, RFC 7143 §11.9.1), waits for them until ctx
// is done, then closes what is left and waits for every goroutine.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.connWG.Wait()
		return nil
	}
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	var sessions []*session
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		ss.mu.Lock()
		c := ss.conn
		ss.mu.Unlock()
		// Parameter3: seconds the initiator has to log out. Never wait
		// for room in the queue: an initiator that does not read would
		// hold up the shutdown (and every session after it) for good.
		if c != nil && !c.trySendPDU(&pdu.AsyncMessage{Event: pdu.AsyncLogoutRequest, Parameter3: 2}, nil, true) {
			c.log.Info("iscsi: send queue full; closing the connection at the end of shutdown instead of asking for a logout")
		}
	}
	done := make(chan struct{})
	go func() {
		for _, ss := range sessions {
			ss.waitClosed()
		}
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.close(ErrServerClosed)
	}
	s.mu.Unlock()
	s.connWG.Wait()
	<-done
	return err
}

// AddTarget starts serving a target. Its name must be unique.
func (s *Server) AddTarget(tc TargetConfig) error {
	if tc.Name == "" || tc.SCSI == nil && tc.Unavailable == "" && (tc.Redirect == "" || tc.RedirectFor != nil) {
		return fmt.Errorf("iscsi: add target %q: name and SCSI are required", tc.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if _, ok := s.targets[tc.Name]; ok {
		return fmt.Errorf("iscsi: add target %q: already exists", tc.Name)
	}
	s.targets[tc.Name] = &target{cfg: tc}
	return nil
}

// RemoveTarget stops serving a target and closes its sessions, waiting for
// their connections to end.
func (s *Server) RemoveTarget(name string) error {
	s.mu.Lock()
	t, ok := s.targets[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("iscsi: remove target %q: %w", name, ErrNoSuchTarget)
	}
	delete(s.targets, name)
	s.mu.Unlock()
	s.closeTargetSessions(t, "target removed", true)
	return nil
}

// CloseSessions closes every session of a target, waiting for them to end;
// the target stays served and initiators may log in again.
func (s *Server) CloseSessions(name string) error {
	s.mu.Lock()
	t, ok := s.targets[name]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("iscsi: close sessions of %q: %w", name, ErrNoSuchTarget)
	}
	s.closeTargetSessions(t, "closed by the administrator", true)
	return nil
}

// closeTargetSessions closes every session of target t and, if wait, waits
// until they are gone. A TARGET COLD RESET does not wait: it runs in one of
// its connection's goroutines, which that connection's end waits for, so
// two cold resets waiting for each other's sessions would never end.
func (s *Server) closeTargetSessions(t *target, reason string, wait bool) {
	s.mu.Lock()
	var victims []*session
	for _, ss := range s.sessions {
		if ss.target == t {
			victims = append(victims, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range victims {
		ss.close(reason)
	}
	for _, ss := range victims {
		if wait {
			ss.waitClosed()
		}
	}
}

// Sessions lists the sessions logged in to a target; "" lists all, including
// discovery sessions.
func (s *Server) Sessions(target string) []SessionInfo {
	s.mu.Lock()
	var list []*session
	for _, ss := range s.sessions {
		if target == "" || ss.key.target == target {
			list = append(list, ss)
		}
	}
	s.mu.Unlock()
	out := make([]SessionInfo, 0, len(list))
	for _, ss := range list {
		out = append(out, ss.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TSIH < out[j].TSIH })
	return out
}

// visibleTargets lists the targets an initiator may log in to, for
// SendTargets: targets whose allow list excludes it are not shown.
// SetTargetPort sets this server's target port for logins from now on
// (sessions logged in keep theirs). A cluster node learns its port number
// from the catalog once it is admitted, before it serves any target.
func (s *Server) SetTargetPort(p TargetPort) {
	if p.PortalGroupTag == 0 || p.RelativePortID == 0 || p.PortGroup == 0 {
		panic(fmt.Sprintf("iscsi: target port %+v has a zero field", p)) // programmer error
	}
	s.port.Store(&p)
}

// targetPort is this server's target port now.
func (s *Server) targetPort() TargetPort { return *s.port.Load() }

// redirectFor is the portal logins to t arriving at local are redirected
// to, "" if they are served here.
func (t *target) redirectFor(local net.Addr) string {
	if t.cfg.RedirectFor != nil {
		return t.cfg.RedirectFor(local)
	}
	return t.cfg.Redirect
}

// withTag is a TargetAddress for portal: as given when it names its
// portal group tag, with this server's otherwise.
func (s *Server) withTag(portal string) string {
	if strings.Contains(portal, ",") {
		return portal
	}
	return fmt.Sprintf("%s,%d", portal, s.targetPort().PortalGroupTag)
}

// addressesOf is what SendTargets gives as a target's addresses to a
// connection arriving at local, "" entries for none: its redirect, its
// portals, or nil for the portal reached.
func (s *Server) addressesOf(name string, local net.Addr) []string {
	s.mu.Lock()
	t, ok := s.targets[name]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	if r := t.redirectFor(local); r != "" {
		return []string{s.withTag(r)}
	}
	if t.cfg.Portals != nil {
		return t.cfg.Portals(local)
	}
	return nil
}

func (s *Server) visibleTargets(initiator string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for name, t := range s.targets {
		allow := t.cfg.Auth.AllowedInitiators
		ok := len(allow) == 0
		for _, a := range allow {
			if strings.EqualFold(a, initiator) {
				ok = true
			}
		}
		if ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
