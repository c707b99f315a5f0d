// Package membership tells a Tandem node which nodes are in the cluster,
// where to reach them and whether they are alive, by gossip
// (hashicorp/memberlist: SWIM failure detection with Lifeguard). The raft
// catalog says which nodes belong to the cluster; gossip says which of them
// answer now, without a leader and within a few probe intervals, and carries
// what changes too often to commit through raft (free space). Only this
// package imports memberlist.
//
// Gossip is always encrypted and authenticated with the cluster key
// (AES-256-GCM, memberlist's keyring, verified both ways): a node without the
// key can neither join nor inject state.
//
// What a member's State means, where memberlist does not say it directly:
//   - memberlist never updates Node.State (hashicorp/memberlist#266) and has
//     no suspect event. A member is Suspect here when this node's own probe of
//     it failed (memberlist logs that line; see suspectName), until one of
//     this node's probes gets an ack or the member is declared dead. A member
//     that only other nodes suspect stays Alive here.
//   - memberlist's leave event is the same for a node that left and one that
//     failed. A leaving node first tells each live peer and waits for its
//     acknowledgement (message.go); a peer it could not tell sees it Dead.
//   - memberlist forgets dead members; this package lists them, Dead or
//     Left, for Config.ForgetAfter.
package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// State is a member's state as this node sees it.
type State string

// States a member can be in.
const (
	StateAlive   State = "alive"
	StateSuspect State = "suspect" // a probe failed; dead unless it answers soon
	StateDead    State = "dead"    // failed: stopped answering probes
	StateLeft    State = "left"    // left on purpose (Leave)
)

// Member is a node of the cluster as this node sees it.
type Member struct {
	Name  string
	Addr  string // gossip host:port
	Meta  Meta
	State State
	Since time.Time // when this node first saw the member in State
}

// Timing tunes failure detection and gossip. Zero fields take DefaultTiming's
// values.
type Timing struct {
	ProbeInterval time.Duration // between probes (one random member each)
	ProbeTimeout  time.Duration // a probe's wait for an ack before asking others to probe
	// SuspicionMult: a suspect is declared dead after about
	// SuspicionMult × max(1, log10(members)) × ProbeInterval.
	SuspicionMult    int
	GossipInterval   time.Duration // between gossip rounds
	PushPullInterval time.Duration // between full state exchanges with a random member
	TCPTimeout       time.Duration // connect and stream I/O: bounds a Join attempt and telling a peer of a Leave
}

// DefaultTiming returns memberlist's LAN defaults (memberlist.DefaultLANConfig).
func DefaultTiming() Timing {
	c := memberlist.DefaultLANConfig()
	return Timing{
		ProbeInterval:    c.ProbeInterval,
		ProbeTimeout:     c.ProbeTimeout,
		SuspicionMult:    c.SuspicionMult,
		GossipInterval:   c.GossipInterval,
		PushPullInterval: c.PushPullInterval,
		TCPTimeout:       c.TCPTimeout,
	}
}

func (t Timing) withDefaults() Timing {
	d := DefaultTiming()
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.ProbeInterval, &d.ProbeInterval}, {&t.ProbeTimeout, &d.ProbeTimeout},
		{&t.GossipInterval, &d.GossipInterval}, {&t.PushPullInterval, &d.PushPullInterval},
		{&t.TCPTimeout, &d.TCPTimeout},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	if t.SuspicionMult == 0 {
		t.SuspicionMult = d.SuspicionMult
	}
	return t
}

// DefaultForgetAfter is how long dead and left members stay listed by default.
const DefaultForgetAfter = 24 * time.Hour

// Config configures a node's membership.
type Config struct {
	Name      string // unique in the cluster: 1-64 letters, digits, '.', '-', '_'
	Bind      string // gossip address, IP:port, TCP and UDP; port 0 picks a free one
	Advertise string // IP:port the others reach the node at; "" means the bound one (needs a bind port)
	SecretKey []byte // the cluster key for memberlist, 32 bytes; required
	Meta      Meta   // what the node tells the others; SetMeta changes it
	Timing    Timing
	// ForgetAfter is how long a dead or left member stays listed; 0 means
	// DefaultForgetAfter.
	ForgetAfter time.Duration
	Logger      *slog.Logger // also receives memberlist's own log; nil means slog.Default()

	// observe, if set (tests), sees every change of a member, called with
	// Membership.mu held.
	observe func(Member)
}

// Validate says what is wrong with the configuration, if anything.
func (c Config) Validate() error {
	if !validName(c.Name) {
		return fmt.Errorf("%w: node name %q: want 1 to %d letters, digits, '.', '-' or '_'", ErrConfig, c.Name, maxNameLen)
	}
	if _, _, err := splitIPPort(c.Bind, true); err != nil {
		return fmt.Errorf("%w: bind address %q: %v", ErrConfig, c.Bind, err)
	}
	if c.Advertise != "" {
		if _, _, err := splitIPPort(c.Advertise, false); err != nil {
			return fmt.Errorf("%w: advertise address %q: %v", ErrConfig, c.Advertise, err)
		}
		// memberlist advertises the port it picked for port 0.
		if _, port, _ := splitIPPort(c.Bind, true); port == 0 {
			return fmt.Errorf("%w: advertise address %q with bind port 0", ErrConfig, c.Advertise)
		}
	}
	if len(c.SecretKey) != 32 {
		return fmt.Errorf("%w: secret key is %d bytes, want 32 (gossip is always encrypted)", ErrConfig, len(c.SecretKey))
	}
	if _, err := c.Meta.marshal(); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	t := c.Timing
	if t.ProbeInterval < 0 || t.ProbeTimeout < 0 || t.SuspicionMult < 0 || t.GossipInterval < 0 ||
		t.PushPullInterval < 0 || t.TCPTimeout < 0 || c.ForgetAfter < 0 {
		return fmt.Errorf("%w: negative timing %+v, forget after %v", ErrConfig, t, c.ForgetAfter)
	}
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// splitIPPort splits an IP:port; memberlist binds and advertises IPs, not
// names.
func splitIPPort(a string, zeroPort bool) (string, int, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "", 0, err
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("host %q is not an IP address", host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 && !zeroPort {
		return "", 0, fmt.Errorf("port %q is not in 1..65535", port)
	}
	return host, int(p), nil
}

// broadcastWait bounds how long Leave and SetMeta wait for memberlist to
// send their broadcast.
const broadcastWait = 5 * time.Second

// leavingFor is how long a member that said it is leaving is taken to have
// left when it is then seen gone; after that it is taken to have failed.
const leavingFor = time.Minute

// Membership is this node's view of the cluster. Its methods may be called
// concurrently.
type Membership struct {
	name    string
	log     *slog.Logger
	forget  time.Duration
	observe func(Member)
	ml      *memberlist.Memberlist // set once by Start; hooks read it under mu
	changes chan struct{}

	// mu protects the fields below. It is never held while calling into
	// memberlist, which calls the hooks with its own locks held.
	mu            sync.Mutex
	members       map[string]*entry
	meta          []byte      // this node's encoded Meta, gossiped by NodeMeta
	leaving       bool        // Leave was called
	leaveAcks     chan string // while Leave waits: the names of peers acknowledging
	selfConflicts int         // conflicts seen over this node's name
	conflictAddr  string      // the other address in the last of them

	// opMu is held for reading by Leave and SetMeta while they call
	// memberlist, and for writing by Close to shut it down: memberlist
	// panics if Leave is called after Shutdown.
	opMu   sync.RWMutex
	closed bool

	wg sync.WaitGroup // goroutines of Join, Leave, SetMeta and acknowledge, which may outlive their ctx
}

// entry is a member and what is needed to reach it.
type entry struct {
	Member
	ip           net.IP
	port         uint16
	leavingUntil time.Time // it said it is leaving: gone before then means left
}

// Start starts gossip on cfg.Bind. The node is alone in its cluster until
// Join.
func Start(cfg Config) (*Membership, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	meta, err := cfg.Meta.marshal()
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ForgetAfter == 0 {
		cfg.ForgetAfter = DefaultForgetAfter
	}
	m := &Membership{
		name:    cfg.Name,
		log:     cfg.Logger,
		forget:  cfg.ForgetAfter,
		observe: cfg.observe,
		changes: make(chan struct{}, 1),
		members: make(map[string]*entry),
		meta:    meta,
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr, mc.BindPort, _ = splitIPPort(cfg.Bind, true)
	mc.AdvertisePort = mc.BindPort
	if cfg.Advertise != "" {
		mc.AdvertiseAddr, mc.AdvertisePort, _ = splitIPPort(cfg.Advertise, false)
	}
	mc.SecretKey = bytes.Clone(cfg.SecretKey)
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	t := cfg.Timing.withDefaults()
	mc.ProbeInterval = t.ProbeInterval
	mc.ProbeTimeout = t.ProbeTimeout
	mc.SuspicionMult = t.SuspicionMult
	mc.GossipInterval = t.GossipInterval
	mc.PushPullInterval = t.PushPullInterval
	mc.TCPTimeout = t.TCPTimeout
	h := hooks{m}
	mc.Delegate, mc.Events, mc.Alive, mc.Conflict, mc.Ping = h, h, h, h, h
	mc.Logger = log.New(&logWriter{log: m.log, suspect: m.suspected}, "", 0)

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: start %s on %s: %w", cfg.Name, cfg.Bind, err)
	}
	m.mu.Lock()
	m.ml = ml
	m.mu.Unlock()
	return m, nil
}

// Changes returns a channel that receives a value after any member appears
// or changes address, metadata or state. Notifications coalesce: one value
// may stand for many changes, so read Members after each.
func (m *Membership) Changes() <-chan struct{} { return m.changes }

// Members returns every member known, this node included, dead and left
// ones too (for ForgetAfter), sorted by name.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgetLocked(time.Now())
	ms := make([]Member, 0, len(m.members))
	for _, e := range m.members {
		ms = append(ms, e.Member)
	}
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return ms
}

// Member returns the named member, if known.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgetLocked(time.Now())
	e, ok := m.members[name]
	if !ok {
		return Member{}, false
	}
	return e.Member, true
}

// Join joins the cluster through the nodes at addrs (gossip host:port; a
// name resolves to all its addresses), trying them all at once. It returns
// how many it joined through. The node is in the cluster if that is not 0;
// a *JoinError says why each address failed when none worked. Addresses
// that failed while others worked are only logged. ErrNameConflict means a
// node of the cluster already has this node's name at another address.
//
// If ctx ends first, Join returns its error; the attempts still running end
// within Timing.TCPTimeout and Close waits for them.
func (m *Membership) Join(ctx context.Context, addrs []string) (int, error) {
	if len(addrs) == 0 {
		return 0, fmt.Errorf("membership: join: no addresses")
	}
	m.opMu.RLock()
	if m.closed {
		m.opMu.RUnlock()
		return 0, ErrClosed
	}
	m.mu.Lock()
	leaving, conflicts := m.leaving, m.selfConflicts
	m.mu.Unlock()
	if leaving {
		m.opMu.RUnlock()
		return 0, ErrLeft
	}
	results := make(chan AddrError, len(addrs)) // Err nil: joined
	for _, a := range addrs {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			_, err := m.ml.Join([]string{a})
			results <- AddrError{Addr: a, Err: flatten(err)}
		}()
	}
	m.opMu.RUnlock()

	joined := 0
	var failed []AddrError
	for range addrs {
		select {
		case r := <-results:
			if r.Err == nil {
				joined++
			} else {
				failed = append(failed, r)
			}
		case <-ctx.Done():
			return joined, fmt.Errorf("membership: join through %d address(es): %w", len(addrs), ctx.Err())
		}
	}
	m.mu.Lock()
	conflict, other := m.selfConflicts != conflicts, m.conflictAddr
	m.mu.Unlock()
	if conflict {
		return joined, fmt.Errorf("membership: join: %w: %q is also at %s", ErrNameConflict, m.name, other)
	}
	if joined == 0 {
		return 0, &JoinError{Failed: failed}
	}
	if len(failed) > 0 {
		m.log.Warn("membership: joined, but not through every address", "joined", joined, "failed", (&JoinError{Failed: failed}).Error())
	}
	return joined, nil
}

// flatten turns memberlist's multierror (a multi-line message) into one
// line.
func flatten(err error) error {
	me, ok := err.(interface{ WrappedErrors() []error })
	if !ok || len(me.WrappedErrors()) == 0 {
		return err
	}
	msgs := make([]string, len(me.WrappedErrors()))
	for i, e := range me.WrappedErrors() {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}

// SetMeta replaces this node's metadata and gossips it. It returns once
// memberlist sent the update or after a few seconds (then with an error; the
// update stands and spreads through later gossip), or when ctx ends.
func (m *Membership) SetMeta(ctx context.Context, meta Meta) error {
	b, err := meta.marshal()
	if err != nil {
		return fmt.Errorf("membership: set meta: %w", err)
	}
	timeout := waitFor(ctx)
	return m.run(ctx, func() error {
		m.mu.Lock()
		if m.leaving {
			m.mu.Unlock()
			return ErrLeft
		}
		m.meta = b
		m.mu.Unlock()
		if err := m.ml.UpdateNode(timeout); err != nil {
			return fmt.Errorf("membership: set meta: %w", err)
		}
		return nil
	})
}

// Leave tells the cluster this node leaves: each live member directly
// (waiting for its acknowledgement), then everyone by gossip. The others then
// list it as Left. Gossip keeps running until Close, which should follow.
// Leave returns once the departure was sent, when ctx ends, or after a few
// seconds at each step (then with an error; the others may see a failure).
func (m *Membership) Leave(ctx context.Context) error {
	timeout := waitFor(ctx)
	return m.run(ctx, func() error {
		m.mu.Lock()
		first := !m.leaving
		m.leaving = true
		var peers []*memberlist.Node
		for _, e := range m.members {
			if e.Name != m.name && e.State == StateAlive {
				peers = append(peers, &memberlist.Node{Name: e.Name, Addr: e.ip, Port: e.port})
			}
		}
		acks := make(chan string, len(peers))
		if first {
			m.leaveAcks = acks
		}
		m.mu.Unlock()
		if first {
			m.tellLeaving(peers, acks, timeout)
			m.mu.Lock()
			m.leaveAcks = nil
			m.mu.Unlock()
		}
		if err := m.ml.Leave(timeout); err != nil {
			return fmt.Errorf("membership: leave: %w", err)
		}
		return nil
	})
}

// tellLeaving tells each peer that this node is about to leave and waits,
// at most timeout, for those it told to acknowledge: they then take the
// departure memberlist gossips next for a leave, not a failure.
func (m *Membership) tellLeaving(peers []*memberlist.Node, acks <-chan string, timeout time.Duration) {
	msg := appendMsg(nil, msgLeaving, m.name)
	told := make(chan string, len(peers)) // "" if telling failed
	var wg sync.WaitGroup
	defer wg.Wait() // each send ends within Timing.TCPTimeout
	for _, p := range peers {
		wg.Go(func() {
			err := m.ml.SendReliable(p, msg)
			if err != nil {
				m.log.Warn("membership: could not tell a member this node is leaving; it will see a failure", "member", p.Name, "addr", p.Address(), "err", err)
				told <- ""
				return
			}
			told <- p.Name
		})
	}
	sending := len(peers)
	waiting := map[string]bool{} // told, not acknowledged
	acked := map[string]bool{}
	deadline := time.After(timeout)
	for sending > 0 || len(waiting) > 0 {
		select {
		case name := <-told:
			sending--
			if name != "" && !acked[name] {
				waiting[name] = true
			}
		case name := <-acks:
			acked[name] = true
			delete(waiting, name)
		case <-deadline:
			m.log.Warn("membership: members did not acknowledge this node is leaving; they may see a failure", "waiting", slices.Sorted(maps.Keys(waiting)), "sending", sending)
			return
		}
	}
}

// waitFor returns how long a memberlist call may wait for a broadcast:
// broadcastWait, or less if ctx ends sooner.
func waitFor(ctx context.Context) time.Duration {
	d := broadcastWait
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, max(time.Until(dl), time.Millisecond))
	}
	return d
}

// run calls f in a goroutine holding opMu for reading, so that Close waits
// for it, and returns its error or ctx's if ctx ends first.
func (m *Membership) run(ctx context.Context, f func() error) error {
	m.opMu.RLock()
	if m.closed {
		m.opMu.RUnlock()
		return ErrClosed
	}
	done := make(chan error, 1)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer m.opMu.RUnlock()
		done <- f()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops gossip without leaving: the others see this node fail unless
// Leave came first. It waits for a Leave or SetMeta in progress and for Join
// attempts, which end within Timing.TCPTimeout plus a few seconds. Closing
// twice is harmless. Members still answers afterwards, with the last view.
// memberlist's own goroutines wind down on their own after Close returns
// (its Shutdown does not wait for them); they may still call the hooks,
// which then only update the member table.
func (m *Membership) Close() error {
	m.opMu.Lock()
	var err error
	if !m.closed {
		m.closed = true
		err = m.ml.Shutdown()
	}
	m.opMu.Unlock()
	m.wg.Wait()
	if err != nil {
		return fmt.Errorf("membership: close %s: %w", m.name, err)
	}
	return nil
}

// The hooks below carry memberlist's calls into the member table.

// alive records a member memberlist saw alive (joined, or its metadata
// changed).
func (m *Membership) alive(n *memberlist.Node, joined bool) {
	meta, err := parseMeta(n.Meta)
	if err != nil { // NotifyAlive let no such node in; keep the zero Meta
		m.log.Warn("membership: member with invalid metadata", "member", n.Name, "err", err)
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entryLocked(n.Name)
	changed := e.set(StateAlive, now)
	if addr := n.Address(); e.Addr != addr || e.Meta != meta {
		e.Addr, e.Meta = addr, meta
		e.ip, e.port = bytes.Clone(n.Addr), n.Port
		changed = true
	}
	if joined {
		e.leavingUntil = time.Time{}
	}
	if changed {
		m.changedLocked(e)
	}
}

// gone records a member memberlist declared dead or saw leave.
func (m *Membership) gone(n *memberlist.Node) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entryLocked(n.Name)
	if e.Addr == "" { // forgotten meanwhile
		e.Addr, e.ip, e.port = n.Address(), bytes.Clone(n.Addr), n.Port
	}
	s := StateDead
	if n.Name == m.name && m.leaving || now.Before(e.leavingUntil) {
		s = StateLeft
	}
	if e.set(s, now) {
		m.changedLocked(e)
	}
}

// suspected records that this node's probe of a member failed.
func (m *Membership) suspected(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.members[name]; ok && name != m.name && e.set(StateSuspect, time.Now(), StateAlive) {
		m.changedLocked(e)
	}
}

// answered records that a member answered this node's probe.
func (m *Membership) answered(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.members[name]; ok && e.set(StateAlive, time.Now(), StateSuspect) {
		m.changedLocked(e)
	}
}

// leavingNotice records that a member said it is about to leave, and
// returns where to send the acknowledgement.
func (m *Membership) leavingNotice(name string) (*memberlist.Memberlist, *memberlist.Node) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.members[name]
	if !ok || name == m.name {
		return nil, nil
	}
	e.leavingUntil = now.Add(leavingFor)
	// The departure may have overtaken the notice.
	if e.set(StateLeft, now, StateDead) {
		m.changedLocked(e)
	}
	if m.ml == nil { // during Start
		return nil, nil
	}
	return m.ml, &memberlist.Node{Name: e.Name, Addr: e.ip, Port: e.port}
}

// acknowledge tells a leaving member its notice arrived. It sends from a
// goroutine (hooks must not block) that Close waits for; none once Close
// began.
func (m *Membership) acknowledge(ml *memberlist.Memberlist, to *memberlist.Node) {
	if !m.opMu.TryRLock() { // Close holds or wants opMu; hooks must not wait
		return
	}
	defer m.opMu.RUnlock()
	if m.closed {
		return
	}
	m.wg.Go(func() {
		if err := ml.SendReliable(to, appendMsg(nil, msgLeavingAck, m.name)); err != nil {
			m.log.Warn("membership: could not acknowledge a member's leaving", "member", to.Name, "addr", to.Address(), "err", err)
		}
	})
}

// leaveAcked records a peer's acknowledgement of this node's leaving.
func (m *Membership) leaveAcked(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case m.leaveAcks <- name: // nil when Leave is not waiting: skipped
	default:
	}
}

func (m *Membership) conflict(existing, other *memberlist.Node) {
	m.log.Error("membership: two nodes have the same name; the one known first is kept, the other ignored",
		"name", existing.Name, "kept", existing.Address(), "ignored", other.Address())
	if existing.Name != m.name {
		return
	}
	m.mu.Lock()
	m.selfConflicts++
	m.conflictAddr = other.Address()
	m.mu.Unlock()
}

func (m *Membership) entryLocked(name string) *entry {
	e, ok := m.members[name]
	if !ok {
		e = &entry{Member: Member{Name: name}}
		m.members[name] = e
	}
	return e
}

// set moves e to state s if it is in one of from (any state if from is
// empty) and reports whether its state changed.
func (e *entry) set(s State, now time.Time, from ...State) bool {
	if e.State == s || len(from) > 0 && !slices.Contains(from, e.State) {
		return false
	}
	e.State, e.Since = s, now
	return true
}

func (m *Membership) changedLocked(e *entry) {
	switch e.State {
	case StateSuspect, StateDead:
		m.log.Warn("membership: member "+string(e.State), "member", e.Name, "addr", e.Addr)
	default:
		m.log.Info("membership: member "+string(e.State), "member", e.Name, "addr", e.Addr, "role", e.Meta.Role)
	}
	if m.observe != nil {
		m.observe(e.Member)
	}
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

// forgetLocked drops members dead or left for longer than m.forget.
func (m *Membership) forgetLocked(now time.Time) {
	for name, e := range m.members {
		if name != m.name && (e.State == StateDead || e.State == StateLeft) && now.Sub(e.Since) > m.forget {
			delete(m.members, name)
		}
	}
}

// hooks implements memberlist's delegates; a type of its own keeps them out
// of Membership's API. memberlist calls them concurrently, some with its
// node lock held: they must not block or call into memberlist.
type hooks struct{ m *Membership }

var (
	_ memberlist.Delegate         = hooks{}
	_ memberlist.EventDelegate    = hooks{}
	_ memberlist.AliveDelegate    = hooks{}
	_ memberlist.ConflictDelegate = hooks{}
	_ memberlist.PingDelegate     = hooks{}
)

// NodeMeta returns this node's metadata; marshal kept it within
// memberlist.MetaMaxSize, which is the limit memberlist passes.
func (h hooks) NodeMeta(limit int) []byte {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	return h.m.meta
}

func (h hooks) NotifyMsg(p []byte) {
	kind, name, err := parseMsg(p)
	if err != nil {
		h.m.log.Warn("membership: ignoring a message from a member", "err", err)
		return
	}
	switch kind {
	case msgLeaving:
		if ml, to := h.m.leavingNotice(name); to != nil {
			h.m.acknowledge(ml, to)
		}
	case msgLeavingAck:
		h.m.leaveAcked(name)
	}
}

func (h hooks) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (h hooks) LocalState(join bool) []byte                { return nil }
func (h hooks) MergeRemoteState(buf []byte, join bool)     {}

func (h hooks) NotifyJoin(n *memberlist.Node)   { h.m.alive(n, true) }
func (h hooks) NotifyUpdate(n *memberlist.Node) { h.m.alive(n, false) }
func (h hooks) NotifyLeave(n *memberlist.Node)  { h.m.gone(n) }

// NotifyAlive keeps out nodes whose metadata does not parse; memberlist logs
// the error.
func (h hooks) NotifyAlive(n *memberlist.Node) error {
	if _, err := parseMeta(n.Meta); err != nil {
		return fmt.Errorf("node %s at %s: %w", n.Name, n.Address(), err)
	}
	return nil
}

func (h hooks) NotifyConflict(existing, other *memberlist.Node) { h.m.conflict(existing, other) }

func (h hooks) AckPayload() []byte { return nil }

func (h hooks) NotifyPingComplete(n *memberlist.Node, rtt time.Duration, payload []byte) {
	h.m.answered(n.Name)
}
