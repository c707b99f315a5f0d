package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"tandem.io/tandem/appliance/lease"
)

// Leases (package appliance/lease) are granted by the raft leader over the
// forwarding RPC. The leader grants only after a quorum committed an entry
// naming the node (LeaseProof), within one term, so that a grant never
// comes from a deposed leader, and a later leader knows when the grant was
// proved; a follower keeps one connection to the leader for its renewals.

// Term returns the raft term this node is in.
func (c *Cluster) Term() uint64 { return c.raft.CurrentTerm() }

// DefaultLeaseMS is the lease of a cluster whose catalog names none.
const DefaultLeaseMS = 1000

// Lease is the cluster's lease duration as this node's catalog has it, and
// whether the catalog has been initialized (before, it is the default).
func (c *Cluster) Lease() (time.Duration, bool) {
	ms, ok := c.fsm.lease()
	if ms == 0 {
		ms = DefaultLeaseMS
	}
	return time.Duration(ms) * time.Millisecond, ok
}

// ProposeAsLeader commits cmd only while this node leads in term, without
// forwarding or retrying: for a decision this leader took on what it knows
// of its own term (a promotion after the grants it made). It returns an
// error wrapping ErrNotLeader when this node does not lead in term, and
// ErrOutcomeUnknown as Propose does.
func (c *Cluster) ProposeAsLeader(ctx context.Context, term uint64, cmd Command) (uint64, error) {
	if err := proposable(cmd); err != nil {
		return 0, err
	}
	data, err := encodeCommand(cmd)
	if err != nil {
		return 0, err
	}
	if c.raft.State() != raft.Leader || c.raft.CurrentTerm() != term {
		return 0, fmt.Errorf("%s: %s does not lead in term %d: %w", cmd.kind(), c.cfg.Name, term, ErrNotLeader)
	}
	index, err := c.applyLocal(ctx, data)
	if err != nil {
		var r retryable
		if errors.As(err, &r) {
			err = r.err
		}
		return 0, err
	}
	if c.raft.CurrentTerm() != term {
		// Committed in term (raft commits a leader's entries only in its
		// own term, or they are overwritten): applied here below.
		c.log.Debug("term moved on after a leader's proposal committed", "kind", cmd.kind())
	}
	if err := c.fsm.waitApplied(ctx, index); err != nil {
		return index, fmt.Errorf("%s: committed at index %d but not yet applied on %s: %w", cmd.kind(), index, c.cfg.Name, err)
	}
	return index, nil
}

// Settle waits until every entry this leader appended in term is applied
// here (a raft barrier), or returns an error wrapping ErrNotLeader once it
// no longer leads in term: after it, a proposal whose outcome was unknown
// is either applied or will never commit.
func (c *Cluster) Settle(ctx context.Context, term uint64) error {
	for {
		if c.raft.State() != raft.Leader || c.raft.CurrentTerm() != term {
			return fmt.Errorf("%s no longer leads in term %d: %w", c.cfg.Name, term, ErrNotLeader)
		}
		err := c.raft.Barrier(time.Second).Error()
		if err == nil {
			return nil
		}
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
			return fmt.Errorf("%s: %w (%v)", c.cfg.Name, ErrNotLeader, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Granted is what Config.Grant gives.
type Granted struct {
	Duration time.Duration
	// Lapsed are nodes whose leases the leader knows have ended: gone,
	// frozen or cut off. A primary stops waiting for their copies.
	Lapsed []string
}

// maxLapsed bounds the nodes a grant names as lapsed.
const maxLapsed = 256

// LeaseGrant is a lease the leader granted.
type LeaseGrant struct {
	// Lapsed are nodes whose leases the leader knows have ended.
	Lapsed []string
	// Duration is how long the lease runs from when it was asked for.
	Duration time.Duration
	// Term is the term of the leader that granted it, when that was this
	// node (a lease it granted itself); 0 otherwise.
	Term uint64
	// Index is the leader's catalog index when it granted: the holder
	// uses the lease only once its catalog has applied that far, so that
	// it knows of every promotion made before the grant (a deposed primary
	// learns it lost its role before a new lease lets it serve again).
	Index uint64
}

// WaitApplied waits until this node's catalog has applied index.
func (c *Cluster) WaitApplied(ctx context.Context, index uint64) error {
	return c.fsm.waitApplied(ctx, index)
}

// grantLease grants node a lease if this node leads, after a quorum
// committed an entry it appended after the request came in, in the term it
// led when asked.
func (c *Cluster) grantLease(node string) (LeaseGrant, error) {
	if c.cfg.Grant == nil {
		return LeaseGrant{}, fmt.Errorf("lease for %s: %w: %s grants no leases", node, ErrUnsupported, c.cfg.Name)
	}
	if err := checkProofNode(node); err != nil {
		return LeaseGrant{}, fmt.Errorf("lease for %q: %w", node, err)
	}
	term := c.raft.CurrentTerm()
	if c.raft.State() != raft.Leader {
		return LeaseGrant{}, fmt.Errorf("lease for %s: %s: %w", node, c.cfg.Name, ErrNotLeader)
	}
	// Proof that this node leads after the request came in: a log entry
	// appended now, committed by a quorum (raft.VerifyLeader may count an
	// answer to a heartbeat sent before). Applying it also applies every
	// earlier entry here, a promotion of an earlier term included.
	if err := c.proveLeading(node); err != nil {
		return LeaseGrant{}, fmt.Errorf("lease for %s: %s could not confirm it leads: %w (%v)", node, c.cfg.Name, ErrNotLeader, err)
	}
	if c.raft.CurrentTerm() != term {
		return LeaseGrant{}, fmt.Errorf("lease for %s: %s: %w: the term changed", node, c.cfg.Name, ErrNotLeader)
	}
	// The index after the grant is recorded: a promotion the leader
	// decided on before (it holds grants back meanwhile) is in it.
	g, err := c.cfg.Grant(node, term)
	if err != nil {
		return LeaseGrant{}, err
	}
	index := c.fsm.index()
	if c.raft.CurrentTerm() != term || c.raft.State() != raft.Leader {
		return LeaseGrant{}, fmt.Errorf("lease for %s: %s: %w: the term changed", node, c.cfg.Name, ErrNotLeader)
	}
	lg := LeaseGrant{Duration: g.Duration, Index: index, Lapsed: g.Lapsed[:min(len(g.Lapsed), maxLapsed)]}
	if node == c.cfg.Name {
		lg.Term = term
	}
	return lg, nil
}

// LeaseProof is the entry a leader commits before granting leases to
// Nodes: their requests came in before it was appended, so a quorum still
// followed this leader after they were asked. It changes no catalog state;
// each node notes when it applied it (fsm.proofs), which tells a later
// leader when those leases had surely ended (EarlierGrants).
type LeaseProof struct {
	// Leader is the node that committed it (a node that led, and may
	// have held what a leader holds: the floating address).
	Leader string   `json:"leader"`
	Nodes  []string `json:"nodes"`
}

func (LeaseProof) kind() string { return "lease-proof" }

func (p LeaseProof) apply(*State) error {
	if len(p.Nodes) > maxProofNodes {
		return fmt.Errorf("lease proof: %w: %d nodes, at most %d", ErrInvalid, len(p.Nodes), maxProofNodes)
	}
	if err := checkProofNode(p.Leader); err != nil {
		return err
	}
	for _, n := range p.Nodes {
		if err := checkProofNode(n); err != nil {
			return err
		}
	}
	return nil
}

// checkProofNode says why a LeaseProof cannot name node. grantLease checks
// before a request joins a proof: one name the proof cannot carry would
// make it fail for every node it names.
func checkProofNode(node string) error {
	if node == "" || len(node) > 255 {
		return fmt.Errorf("lease proof: %w: node name %q", ErrInvalid, node)
	}
	return nil
}

// proposable refuses the commands only the cluster itself commits: lease
// proofs (the prover's, naming the leader that committed them; one
// proposed would also never move the catalog index a proposer waits for).
func proposable(cmd Command) error {
	if _, ok := cmd.(LeaseProof); ok {
		return fmt.Errorf("%s: %w: committed only by the leader's lease prover", cmd.kind(), ErrInvalid)
	}
	return nil
}

// maxProofNodes bounds the nodes one LeaseProof names: a proof names each
// node with a renewal waiting, each at most once.
const maxProofNodes = 4096

// EarlierGrants waits until this node, as the leader of term, has applied
// every entry of earlier terms (Settle), then returns when it applied the
// entries that proved earlier leaders' lease grants: a new leader promotes
// in place of a primary once its lease has surely ended, counting from
// those times rather than from taking office.
func (c *Cluster) EarlierGrants(ctx context.Context, term uint64) (lease.Earlier, error) {
	if err := c.Settle(ctx, term); err != nil {
		return lease.Earlier{}, err
	}
	return c.fsm.earlier(term), nil
}

// proof is one committed LeaseProof proving this node leads, shared by the
// grants that asked for one before it started.
type proof struct {
	nodes []string // the nodes asking; each once
	done  chan struct{}
	err   error
}

// prover coalesces the barriers of concurrent grants: at most one runs, and
// the requests that arrive meanwhile share the next one (it starts after
// they arrived, which is what each needs).
type prover struct {
	mu      sync.Mutex
	next    *proof // not started yet; joined by new requests
	running bool
}

// proveLeading returns once a LeaseProof naming node, appended after the
// call, has committed, or its error.
func (c *Cluster) proveLeading(node string) error {
	pr := &c.prover
	pr.mu.Lock()
	if pr.next == nil {
		pr.next = &proof{done: make(chan struct{})}
	}
	p := pr.next
	if !slices.Contains(p.nodes, node) {
		if len(p.nodes) >= maxProofNodes {
			// A grant must be named by its proof (a later leader counts
			// it from there): none without.
			pr.mu.Unlock()
			return fmt.Errorf("%w: more than %d nodes renewing at once", ErrTooLarge, maxProofNodes)
		}
		p.nodes = append(p.nodes, node)
	}
	if !pr.running {
		if !c.track() { // closed: Close waits for the goroutines it tracks
			pr.next = nil
			pr.mu.Unlock()
			return ErrClosed
		}
		pr.running = true
		go func() {
			defer c.wg.Done()
			c.runProofs()
		}()
	}
	pr.mu.Unlock()
	<-p.done
	return p.err
}

// runProofs runs the pending proofs one after the other until none is left.
func (c *Cluster) runProofs() {
	pr := &c.prover
	for {
		pr.mu.Lock()
		p := pr.next
		pr.next = nil
		if p == nil {
			pr.running = false
			pr.mu.Unlock()
			return
		}
		pr.mu.Unlock()
		p.err = c.commitProof(p.nodes)
		close(p.done)
	}
}

// commitProof commits a LeaseProof naming nodes, waiting at most 5 s.
func (c *Cluster) commitProof(nodes []string) error {
	data, err := encodeCommand(LeaseProof{Leader: c.cfg.Name, Nodes: nodes})
	if err != nil {
		return err
	}
	f := c.raft.Apply(data, 5*time.Second)
	if err := f.Error(); err != nil {
		return err
	}
	if res, ok := f.Response().(applyResult); ok && res.err != nil {
		return res.err
	}
	return nil
}

// leaseConn is a follower's connection to the leader for renewals.
type leaseConn struct {
	mu     sync.Mutex
	addr   raft.ServerAddress
	conn   net.Conn
	closed bool // by Close: no connection is made any more
}

// RenewLease asks the leader for a lease for this node; its duration counts
// from before the call. It fails (and the lease runs out) when there is no
// leader, the leader cannot confirm it leads, or ctx ends first.
func (c *Cluster) RenewLease(ctx context.Context) (LeaseGrant, error) {
	switch c.raft.State() {
	case raft.Leader:
		return c.grantLease(c.cfg.Name)
	case raft.Shutdown:
		return LeaseGrant{}, ErrClosed
	}
	addr, id := c.raft.LeaderWithID()
	if addr == "" || id == raft.ServerID(c.cfg.Name) {
		return LeaseGrant{}, fmt.Errorf("lease for %s: %w", c.cfg.Name, ErrNoLeader)
	}
	if c.cfg.Forward == nil {
		return LeaseGrant{}, fmt.Errorf("lease for %s: %w: no Forward dialer configured", c.cfg.Name, ErrNotLeader)
	}
	lc := &c.lease
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.closed {
		return LeaseGrant{}, ErrClosed
	}
	if lc.conn != nil && lc.addr != addr {
		lc.conn.Close()
		lc.conn = nil
	}
	if lc.conn == nil {
		conn, err := c.cfg.Forward.Dial(ctx, addr)
		if err != nil {
			return LeaseGrant{}, fmt.Errorf("lease for %s: dial leader %s at %s: %w", c.cfg.Name, id, addr, err)
		}
		lc.conn, lc.addr = conn, addr
	}
	g, err := c.askLease(ctx, lc.conn)
	if err != nil {
		var st statusErr
		if !errors.As(err, &st) { // the connection is in an unknown state
			lc.conn.Close()
			lc.conn = nil
		}
		return LeaseGrant{}, fmt.Errorf("lease for %s from leader %s: %w", c.cfg.Name, id, err)
	}
	return g, nil
}

// statusErr is an answer that refused the lease; the connection is fine.
type statusErr struct{ error }

func (e statusErr) Unwrap() error { return e.error }

func (c *Cluster) askLease(ctx context.Context, conn net.Conn) (LeaseGrant, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(defaultForwardTimeout)
	}
	_ = conn.SetDeadline(dl)
	p, err := json.Marshal(rpcRequest{V: rpcVersion, Op: opLease, Node: c.cfg.Name, TimeoutMS: max(time.Until(dl).Milliseconds(), 1)})
	if err != nil {
		return LeaseGrant{}, err
	}
	if err := writeFrame(conn, p); err != nil {
		return LeaseGrant{}, ctxOr(ctx, err)
	}
	p, err = readFrame(conn)
	if err != nil {
		return LeaseGrant{}, ctxOr(ctx, err)
	}
	resp, err := decodeResponse(p)
	if err != nil {
		return LeaseGrant{}, err
	}
	if resp.Code != "" {
		return LeaseGrant{}, statusErr{decodeError(resp.Code, resp.Error)}
	}
	if resp.LeaseMS <= 0 {
		return LeaseGrant{}, fmt.Errorf("%w: an answer without a lease", ErrInvalid)
	}
	if len(resp.Lapsed) > maxLapsed {
		return LeaseGrant{}, fmt.Errorf("%w: %d lapsed nodes, at most %d", ErrInvalid, len(resp.Lapsed), maxLapsed)
	}
	return LeaseGrant{Duration: time.Duration(resp.LeaseMS) * time.Millisecond, Index: resp.Index, Lapsed: resp.Lapsed}, nil
}

// closeLease closes the renewal connection for good (Close). A renewal
// under way is cut short: its connection's deadline is now.
func (c *Cluster) closeLease() {
	c.lease.mu.Lock()
	defer c.lease.mu.Unlock()
	c.lease.closed = true
	if c.lease.conn != nil {
		c.lease.conn.Close()
		c.lease.conn = nil
	}
}
