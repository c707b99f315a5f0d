package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// MaxVoters is the most raft voters Admit makes; later data nodes become
// non-voters.
const MaxVoters = 5

// Dialer reaches another node's ServeRPC listener at its link address.
type Dialer interface {
	Dial(ctx context.Context, addr raft.ServerAddress) (net.Conn, error)
}

// Config configures a Cluster.
type Config struct {
	// Name is the node's name and raft server ID.
	Name string
	// Dir holds the raft log and stable store (Dir/raft.db) and the
	// catalog snapshots (Dir/snapshots). One process uses it at a time.
	Dir string
	// Transport carries raft between nodes: over the authenticated link in
	// production, raft.NewInmemTransport in tests. Its LocalAddr is this
	// node's raft address. raft closes it on Close.
	Transport raft.Transport
	// Bootstrap, when Dir holds no raft state, starts a new cluster with
	// this node as the sole voter; its first leadership commits Init with a
	// fresh cluster ID. Without it a new node waits to be admitted.
	Bootstrap bool
	// Forward dials the leader to forward proposals from a follower.
	Forward Dialer
	// Lease is the lease duration a cluster this node starts (Bootstrap)
	// keeps for its life (0: DefaultLeaseMS).
	Lease time.Duration
	// Grant, on the leader, records a lease granted to node in the raft
	// term given, once the leader checked it still leads, and returns the
	// duration granted and the nodes whose leases have ended
	// (RenewLease). The grant's index is read after it returns: a leader
	// that promotes a replica holds Grant back until the promotion is
	// applied here. Nil: no leases are granted.
	Grant func(node string, term uint64) (Granted, error)
	// Port, on a volume's primary, runs a command another node's target
	// port passes to it (RunOnPrimary); an error wrapping ErrNotPrimary
	// says this node does not serve the volume as its primary. Nil: none
	// are run.
	Port func(ctx context.Context, cmd PortCommand) (PortResult, error)
	// Logger receives the catalog's and raft's logs (raft's chatter at
	// debug level). Nil discards them.
	Logger *slog.Logger

	// Raft timings; zero means raft's defaults (fine in production; tests
	// shorten them).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold is how many log entries since the last snapshot
	// trigger a new one, TrailingLogs how many entries a snapshot leaves in
	// the log (for followers slightly behind); zero means 1024 each.
	SnapshotThreshold uint64
	TrailingLogs      uint64

	// noSync skips the raft store's fsyncs: tests only, where a busy
	// disk's slow fsyncs would depose leaders at random.
	noSync bool
}

// Validate checks the configuration and says what is wrong.
func (c Config) Validate() error {
	switch {
	case c.Name == "":
		return fmt.Errorf("cluster config: empty node name")
	case c.Dir == "":
		return fmt.Errorf("cluster config: empty raft directory")
	case c.Transport == nil:
		return fmt.Errorf("cluster config: no raft transport")
	}
	if err := raft.ValidateConfig(c.raftConfig(nil)); err != nil {
		return fmt.Errorf("cluster config: %w", err)
	}
	return nil
}

// raftConfig returns raft's configuration for c.
func (c Config) raftConfig(logger *hclogAdapter) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.Name)
	if logger != nil {
		rc.Logger = logger
	}
	rc.NoLegacyTelemetry = true
	rc.SnapshotThreshold = 1024
	rc.TrailingLogs = 1024
	set := func(d *time.Duration, v time.Duration) {
		if v > 0 {
			*d = v
		}
	}
	set(&rc.HeartbeatTimeout, c.HeartbeatTimeout)
	set(&rc.ElectionTimeout, c.ElectionTimeout)
	set(&rc.LeaderLeaseTimeout, c.LeaderLeaseTimeout)
	set(&rc.CommitTimeout, c.CommitTimeout)
	// A shortened heartbeat shortens the defaults that may not exceed it.
	if c.LeaderLeaseTimeout == 0 && rc.LeaderLeaseTimeout > rc.HeartbeatTimeout {
		rc.LeaderLeaseTimeout = rc.HeartbeatTimeout
	}
	if c.ElectionTimeout == 0 && rc.ElectionTimeout < rc.HeartbeatTimeout {
		rc.ElectionTimeout = rc.HeartbeatTimeout
	}
	if c.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = c.SnapshotThreshold
	}
	if c.TrailingLogs > 0 {
		rc.TrailingLogs = c.TrailingLogs
	}
	return rc
}

// Cluster is this node's replica of the catalog and its raft server. Its
// methods are safe for concurrent use.
type Cluster struct {
	cfg      Config
	log      *slog.Logger
	raft     *raft.Raft
	fsm      *fsm
	store    *raftboltdb.BoltStore
	lock     *os.File
	observer *raft.Observer
	lease    leaseConn // a follower's connection for lease renewals
	prover   prover    // the leader's coalesced proofs that it leads

	// ctx is cancelled by Close; it stops ServeRPC and the leader watch.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex // protects closed and adding to wg
	closed bool
	// wg counts the goroutines the Cluster owns (the leader watch, waits
	// on raft futures, ServeRPC calls); Close waits for them.
	wg sync.WaitGroup
}

// Open opens (or, with Bootstrap, creates) the node's raft state in
// cfg.Dir and starts raft. It returns without waiting for a leader; watch
// Changes (the ClusterID appears once Init is committed) or Leader.
func Open(cfg Config) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "cluster")
	hlog := newHCLogAdapter(logger)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open cluster: %w", err)
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, log: logger, fsm: newFSM(), lock: lock}
	ok := false
	defer func() {
		if !ok {
			if c.store != nil {
				c.store.Close()
			}
			lock.Close()
		}
	}()
	c.store, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db"), NoSync: cfg.noSync})
	if err != nil {
		return nil, fmt.Errorf("open cluster: raft store %s: %w", filepath.Join(cfg.Dir, "raft.db"), err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hlog)
	if err != nil {
		return nil, fmt.Errorf("open cluster: snapshot store in %s: %w", cfg.Dir, err)
	}
	rc := cfg.raftConfig(hlog)
	has, err := raft.HasExistingState(c.store, c.store, snaps)
	if err != nil {
		return nil, fmt.Errorf("open cluster: %w", err)
	}
	switch {
	case has:
		if err := c.followAddressChange(rc, snaps); err != nil {
			return nil, err
		}
	case cfg.Bootstrap:
		conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: rc.LocalID, Address: cfg.Transport.LocalAddr()}}}
		if err := raft.BootstrapCluster(rc, c.store, c.store, snaps, cfg.Transport, conf); err != nil {
			return nil, fmt.Errorf("open cluster: bootstrap: %w", err)
		}
		logger.Info("bootstrapped a new cluster", "node", cfg.Name, "link", cfg.Transport.LocalAddr())
	default:
		logger.Info("waiting to be admitted to a cluster", "node", cfg.Name, "link", cfg.Transport.LocalAddr())
	}
	c.raft, err = raft.NewRaft(rc, c.fsm, c.store, c.store, snaps, cfg.Transport)
	if err != nil {
		return nil, fmt.Errorf("open cluster: start raft: %w", err)
	}
	ok = true
	c.ctx, c.cancel = context.WithCancel(context.Background())
	obs := make(chan raft.Observation, 16)
	c.observer = raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	c.raft.RegisterObserver(c.observer)
	c.track()
	go func() {
		defer c.wg.Done()
		c.watchLeader(obs)
	}()
	return c, nil
}

// lockDir takes an exclusive lock on dir, so that two processes never open
// the same raft store (bbolt would wait forever for the second).
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open cluster: lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("open cluster: %s is in use by another process: %w", dir, err)
	}
	return f, nil
}

// followAddressChange handles a node restarted with a link address other
// than the one its raft configuration holds. The sole voter rewrites its
// configuration with the new address (raft.RecoverCluster; safe, as no
// other voter can hold entries it lacks), so a single node keeps its
// catalog. In a larger cluster the leader must admit the node again with
// its new address; this only logs that.
func (c *Cluster) followAddressChange(rc *raft.Config, snaps raft.SnapshotStore) error {
	addr := c.cfg.Transport.LocalAddr()
	probe := *rc // GetConfiguration marks its config to skip startup
	conf, err := raft.GetConfiguration(&probe, newFSM(), c.store, c.store, snaps, c.cfg.Transport)
	if err != nil {
		return fmt.Errorf("open cluster: read raft configuration: %w", err)
	}
	voters := 0
	me := -1
	for i, s := range conf.Servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
		if s.ID == rc.LocalID {
			me = i
		}
	}
	if me < 0 || conf.Servers[me].Address == addr {
		return nil
	}
	old := conf.Servers[me].Address
	if conf.Servers[me].Suffrage != raft.Voter || voters > 1 {
		c.log.Warn("this node's link address changed: the leader must admit it again with the new address",
			"node", c.cfg.Name, "old", old, "new", addr)
		return nil
	}
	conf = conf.Clone()
	conf.Servers[me].Address = addr
	recover := *rc
	if err := raft.RecoverCluster(&recover, newFSM(), c.store, c.store, snaps, c.cfg.Transport, conf); err != nil {
		return fmt.Errorf("open cluster: move the sole voter %s from %s to %s: %w", c.cfg.Name, old, addr, err)
	}
	c.log.Info("link address changed: the sole voter now uses its new address", "node", c.cfg.Name, "old", old, "new", addr)
	return nil
}

// track adds a goroutine to wg unless the Cluster is closed.
func (c *Cluster) track() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

// watchLeader logs leadership changes, notifies Changes, and, on a
// leader whose catalog has no cluster ID yet (a new cluster), commits
// Init, trying again every second until it is committed.
func (c *Cluster) watchLeader(obs <-chan raft.Observation) {
	last := raft.ServerID("")
	// check returns whether Init is still to be committed by this leader.
	check := func() bool {
		addr, id := c.raft.LeaderWithID()
		if id != last {
			last = id
			c.fsm.notify()
			if id == "" {
				c.log.Info("raft leader lost", "node", c.cfg.Name)
			} else {
				c.log.Info("raft leader", "leader", id, "addr", addr, "self", id == raft.ServerID(c.cfg.Name))
			}
		}
		if !c.IsLeader() || c.fsm.clusterID() != "" {
			return false
		}
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		defer cancel()
		_, err := c.Propose(ctx, Init{ClusterID: newID(), LeaseMS: c.cfg.Lease.Milliseconds()})
		switch {
		case err == nil:
			c.log.Info("cluster initialized", "cluster", c.fsm.clusterID())
		case errors.Is(err, ErrExists) || c.ctx.Err() != nil:
		default:
			c.log.Warn("initializing the cluster ID failed; trying again", "err", err)
			return true
		}
		return false
	}
	var retry <-chan time.Time
	if check() {
		retry = time.After(time.Second)
	}
	for {
		select {
		case <-obs:
		case <-retry:
		case <-c.ctx.Done():
			return
		}
		retry = nil
		if check() {
			retry = time.After(time.Second)
		}
	}
}

// newID returns 16 random bytes in hex.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// retryable marks a failure to reach a leader that changed nothing:
// Propose tries again.
type retryable struct{ err error }

func (r retryable) Error() string { return r.err.Error() }
func (r retryable) Unwrap() error { return r.err }

const (
	minRetry = 10 * time.Millisecond
	maxRetry = 250 * time.Millisecond
)

// Propose commits cmd and returns the raft index it was applied at, once
// this node has applied it too (State then shows it). On the leader it is
// applied directly; on a follower it is forwarded to the leader, retrying
// while there is no leader or the leader changes, until ctx is done
// (ErrNoLeader). A command the catalog refuses returns its error
// (ErrConflict, ErrStaleEpoch...). ErrOutcomeUnknown means the command was
// sent but the leader was deposed or unreachable before answering.
func (c *Cluster) Propose(ctx context.Context, cmd Command) (uint64, error) {
	if err := proposable(cmd); err != nil {
		return 0, err
	}
	data, err := encodeCommand(cmd)
	if err != nil {
		return 0, err
	}
	wait := minRetry
	for {
		index, err := c.proposeOnce(ctx, data)
		if err == nil {
			if err := c.fsm.waitApplied(ctx, index); err != nil {
				return index, fmt.Errorf("%s: committed at index %d but not yet applied on %s: %w", cmd.kind(), index, c.cfg.Name, err)
			}
			return index, nil
		}
		var r retryable
		if !errors.As(err, &r) {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, c.noLeader(cmd.kind(), r.err)
		case <-c.ctx.Done():
			return 0, fmt.Errorf("%s: %w", cmd.kind(), ErrClosed)
		case <-time.After(wait):
		}
		wait = min(2*wait, maxRetry)
	}
}

// noLeader explains a proposal that found no leader in time.
func (c *Cluster) noLeader(kind string, last error) error {
	voters := 0
	if servers, err := c.Servers(); err == nil {
		for _, s := range servers {
			if s.Suffrage == Voter {
				voters++
			}
		}
	}
	if voters == 0 {
		return fmt.Errorf("%s: %w: %s is in no raft configuration yet (not admitted to a cluster); last attempt: %v",
			kind, ErrNoLeader, c.cfg.Name, last)
	}
	return fmt.Errorf("%s: %w: the cluster has lost its majority (%d of %d voters must be reachable); last attempt: %v",
		kind, ErrNoLeader, voters/2+1, voters, last)
}

// proposeOnce commits data through the current leader once.
func (c *Cluster) proposeOnce(ctx context.Context, data []byte) (uint64, error) {
	switch c.raft.State() {
	case raft.Leader:
		return c.applyLocal(ctx, data)
	case raft.Shutdown:
		return 0, fmt.Errorf("%w: raft has stopped on %s (closed, or removed from the cluster)", ErrClosed, c.cfg.Name)
	}
	addr, id := c.raft.LeaderWithID()
	if addr == "" || id == raft.ServerID(c.cfg.Name) {
		return 0, retryable{fmt.Errorf("%s knows no leader", c.cfg.Name)}
	}
	return c.forward(ctx, string(id), addr, data)
}

// applyLocal commits data on this node, which should be the leader.
func (c *Cluster) applyLocal(ctx context.Context, data []byte) (uint64, error) {
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	f := c.raft.Apply(data, timeout)
	if !c.track() {
		return 0, ErrClosed
	}
	done := make(chan error, 1)
	go func() {
		defer c.wg.Done()
		done <- f.Error() // raft answers every future, at the latest on shutdown
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return 0, fmt.Errorf("%w: %v while committing", ErrOutcomeUnknown, ctx.Err())
	}
	switch {
	case err == nil:
	case errors.Is(err, raft.ErrNotLeader):
		return 0, retryable{fmt.Errorf("%s: %w", c.cfg.Name, ErrNotLeader)}
	case errors.Is(err, raft.ErrLeadershipLost):
		return 0, fmt.Errorf("%w: %s lost its leadership while committing", ErrOutcomeUnknown, c.cfg.Name)
	case errors.Is(err, raft.ErrRaftShutdown):
		return 0, ErrClosed
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return 0, fmt.Errorf("%s: %w", c.cfg.Name, context.DeadlineExceeded)
	default:
		return 0, fmt.Errorf("commit on %s: %w", c.cfg.Name, err)
	}
	if res, ok := f.Response().(applyResult); ok && res.err != nil {
		return 0, res.err
	}
	return f.Index(), nil
}

// State returns a deep copy of the catalog as this node has applied it
// (one index; it may lag the leader's by the entries in flight).
func (c *Cluster) State() State { return c.fsm.State() }

// Volume returns one volume of the catalog and the node records (copies),
// for readers that need no more: cheaper than State with many volumes.
func (c *Cluster) Volume(name string) (Volume, map[string]Node, bool) { return c.fsm.volume(name) }

// Changes returns a channel that gets a value after changes are applied
// (commands that took effect, snapshots restored) and when the leader
// changes. Notifications coalesce: read State (and IsLeader) after each.
// There is one channel: give it one reader.
func (c *Cluster) Changes() <-chan struct{} { return c.fsm.changes }

// IsLeader reports whether this node is the raft leader.
func (c *Cluster) IsLeader() bool { return c.raft.State() == raft.Leader }

// Leader returns the leader's name and link address as this node knows
// them; empty if there is none.
func (c *Cluster) Leader() (id, addr string) {
	a, i := c.raft.LeaderWithID()
	return string(i), string(a)
}

// Suffrage says whether a raft server votes.
type Suffrage string

const (
	Voter    Suffrage = "voter"
	Nonvoter Suffrage = "nonvoter"
	Staging  Suffrage = "staging" // raft's unused intermediate state
)

// Server is a member of the raft configuration.
type Server struct {
	ID       string   // node name
	Address  string   // link address
	Suffrage Suffrage // voter or nonvoter
}

// Servers returns the raft configuration as this node knows it.
func (c *Cluster) Servers() ([]Server, error) {
	conf, err := c.configuration()
	if err != nil {
		return nil, err
	}
	out := make([]Server, 0, len(conf.Servers))
	for _, s := range conf.Servers {
		out = append(out, Server{ID: string(s.ID), Address: string(s.Address), Suffrage: suffrage(s.Suffrage)})
	}
	return out, nil
}

func suffrage(s raft.ServerSuffrage) Suffrage {
	switch s {
	case raft.Voter:
		return Voter
	case raft.Nonvoter:
		return Nonvoter
	}
	return Staging
}

func (c *Cluster) configuration() (raft.Configuration, error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Configuration{}, fmt.Errorf("raft configuration: %w", err)
	}
	return f.Configuration(), nil
}

// Admit adds node n to the catalog (PutNode) and to the raft
// configuration; on the leader only (ErrNotLeader elsewhere). It is a
// voter while there are fewer than MaxVoters voters, else a non-voter; a
// witness is always a voter and is refused (ErrConflict) when MaxVoters
// voters exist. Admitting a node again updates its record and link address
// (how a node that moved is followed), and promotes a non-voter when a
// voter's place is free. n.Joined is set to now for a new node if zero.
func (c *Cluster) Admit(ctx context.Context, n Node) error {
	if !c.IsLeader() {
		return c.notLeader("admit node " + n.Name)
	}
	if err := checkNode(n); err != nil {
		return fmt.Errorf("admit node: %w", err)
	}
	conf, err := c.configuration()
	if err != nil {
		return fmt.Errorf("admit node %s: %w", n.Name, err)
	}
	id, addr := raft.ServerID(n.Name), raft.ServerAddress(n.Link)
	voters := 0
	var existing *raft.Server
	for i, s := range conf.Servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
		if s.ID == id {
			existing = &conf.Servers[i]
		} else if s.Address == addr {
			return fmt.Errorf("admit node %s: %w: link address %s is node %s's", n.Name, ErrConflict, addr, s.ID)
		}
	}
	voter := voters < MaxVoters || (existing != nil && existing.Suffrage == raft.Voter)
	if !voter && n.Role == RoleWitness {
		return fmt.Errorf("admit witness %s: %w: the cluster has %d voters already and a witness must be a voter; remove a voter first",
			n.Name, ErrConflict, voters)
	}
	if n.Joined.IsZero() {
		n.Joined = time.Now().UTC()
	}
	if _, err := c.Propose(ctx, PutNode{Node: n}); err != nil {
		return fmt.Errorf("admit node %s: %w", n.Name, err)
	}
	if existing != nil && existing.Address == addr && (existing.Suffrage == raft.Voter) == voter {
		return nil
	}
	if err := c.addServer(ctx, id, addr, voter); err != nil {
		return fmt.Errorf("admit node %s: %w", n.Name, err)
	}
	c.log.Info("admitted node", "node", n.Name, "link", n.Link, "role", n.Role, "voter", voter)
	return nil
}

// addServer adds (or updates) a server in the raft configuration.
func (c *Cluster) addServer(ctx context.Context, id raft.ServerID, addr raft.ServerAddress, voter bool) error {
	timeout := timeoutOf(ctx)
	var f raft.IndexFuture
	if voter {
		f = c.raft.AddVoter(id, addr, 0, timeout)
	} else {
		f = c.raft.AddNonvoter(id, addr, 0, timeout)
	}
	return c.waitConfigChange(ctx, f)
}

// waitConfigChange waits for a raft configuration change.
func (c *Cluster) waitConfigChange(ctx context.Context, f raft.Future) error {
	if !c.track() {
		return ErrClosed
	}
	done := make(chan error, 1)
	go func() {
		defer c.wg.Done()
		done <- f.Error()
	}()
	select {
	case err := <-done:
		switch {
		case err == nil:
			return nil
		case errors.Is(err, raft.ErrNotLeader):
			return c.notLeader("raft configuration change")
		case errors.Is(err, raft.ErrLeadershipLost):
			return fmt.Errorf("raft configuration change: %w: leadership lost", ErrOutcomeUnknown)
		case errors.Is(err, raft.ErrRaftShutdown):
			return ErrClosed
		}
		return fmt.Errorf("raft configuration change: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("raft configuration change: %w: %v", ErrOutcomeUnknown, ctx.Err())
	}
}

// timeoutOf returns ctx's remaining time, 0 (none) without a deadline.
func timeoutOf(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return 0
}

// notLeader says that op needs the leader, and who it is.
func (c *Cluster) notLeader(op string) error {
	id, addr := c.Leader()
	if id == "" {
		return fmt.Errorf("%s: %w: %s is not the leader and knows none", op, ErrNotLeader, c.cfg.Name)
	}
	return fmt.Errorf("%s: %w: the leader is %s at %s", op, ErrNotLeader, id, addr)
}

// Remove takes the named node out of the catalog (RemoveNode: refused while
// it is the primary of a volume) and out of the raft configuration; on the
// leader only. The leader cannot remove itself (transfer the leadership
// first), so the last voter is never removed. When a voter leaves, the
// oldest non-voting data node takes its place. The removed node's raft
// is not stopped by this: its node sees itself gone from State().Nodes and
// closes its Cluster (its proposals find no leader meanwhile).
func (c *Cluster) Remove(ctx context.Context, name string) error {
	if !c.IsLeader() {
		return c.notLeader("remove node " + name)
	}
	if name == c.cfg.Name {
		return fmt.Errorf("remove node %s: %w: it is the leader (this node); transfer the leadership first", name, ErrConflict)
	}
	conf, err := c.configuration()
	if err != nil {
		return fmt.Errorf("remove node %s: %w", name, err)
	}
	voters := 0
	var target *raft.Server
	for i, s := range conf.Servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
		if s.ID == raft.ServerID(name) {
			target = &conf.Servers[i]
		}
	}
	if target != nil && target.Suffrage == raft.Voter && voters == 1 {
		return fmt.Errorf("remove node %s: %w: it is the last voter", name, ErrConflict)
	}
	if _, err := c.Propose(ctx, RemoveNode{Name: name}); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("remove node %s: %w", name, err)
	} else if err != nil && target == nil {
		return fmt.Errorf("remove node %s: %w", name, ErrNotFound)
	}
	if target == nil {
		c.log.Info("removed node", "node", name)
		return nil
	}
	if err := c.waitConfigChange(ctx, c.raft.RemoveServer(target.ID, 0, timeoutOf(ctx))); err != nil {
		return fmt.Errorf("remove node %s: %w", name, err)
	}
	c.log.Info("removed node", "node", name, "voter", target.Suffrage == raft.Voter)
	if target.Suffrage == raft.Voter {
		return c.promote(ctx, conf, name)
	}
	return nil
}

// promote makes the oldest non-voting data node a voter, after removed
// left the voters of conf.
func (c *Cluster) promote(ctx context.Context, conf raft.Configuration, removed string) error {
	st := c.State()
	var best *Node
	for _, s := range conf.Servers {
		n, ok := st.Nodes[string(s.ID)]
		if s.Suffrage != raft.Nonvoter || !ok || n.Name == removed {
			continue
		}
		if best == nil || n.Joined.Before(best.Joined) || (n.Joined.Equal(best.Joined) && n.Name < best.Name) {
			best = &n
		}
	}
	if best == nil {
		return nil
	}
	if err := c.addServer(ctx, raft.ServerID(best.Name), raft.ServerAddress(best.Link), true); err != nil {
		return fmt.Errorf("promote %s to voter: %w", best.Name, err)
	}
	c.log.Info("promoted node to voter", "node", best.Name)
	return nil
}

// Stats returns raft's statistics (state, term, indexes, configuration)
// and the catalog's size, for metrics.
func (c *Cluster) Stats() map[string]string {
	s := c.raft.Stats()
	st := c.State()
	s["catalog_index"] = strconv.FormatUint(st.Index, 10)
	s["catalog_nodes"] = strconv.Itoa(len(st.Nodes))
	s["catalog_volumes"] = strconv.Itoa(len(st.Volumes))
	return s
}

// Close stops raft (closing the transport), waits for the Cluster's
// goroutines and closes the store. It is idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.closeLease()
	errs := []error{c.raft.Shutdown().Error()}
	c.raft.DeregisterObserver(c.observer)
	c.wg.Wait()
	errs = append(errs, c.store.Close(), c.lock.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close cluster: %w", err)
	}
	return nil
}
