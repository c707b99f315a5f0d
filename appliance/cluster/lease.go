package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Leases (package appliance/lease) are granted by the raft leader over the
// forwarding RPC. The leader grants only after a quorum confirmed it still
// leads, within one term, so that a grant never comes from a deposed
// leader; a follower keeps one connection to the leader for its renewals.

// Term returns the raft term this node is in.
func (c *Cluster) Term() uint64 { return c.raft.CurrentTerm() }

// grantLease grants node a lease if this node leads, after a quorum
// confirmed it, in the term it led when asked.
func (c *Cluster) grantLease(node string) (time.Duration, error) {
	if c.cfg.Grant == nil {
		return 0, fmt.Errorf("lease for %s: %w: %s grants no leases", node, ErrUnsupported, c.cfg.Name)
	}
	term := c.raft.CurrentTerm()
	if c.raft.State() != raft.Leader {
		return 0, fmt.Errorf("lease for %s: %s: %w", node, c.cfg.Name, ErrNotLeader)
	}
	if err := c.raft.VerifyLeader().Error(); err != nil {
		return 0, fmt.Errorf("lease for %s: %s could not confirm it leads: %w (%v)", node, c.cfg.Name, ErrNotLeader, err)
	}
	if c.raft.CurrentTerm() != term || c.raft.State() != raft.Leader {
		return 0, fmt.Errorf("lease for %s: %s: %w: the term changed", node, c.cfg.Name, ErrNotLeader)
	}
	return c.cfg.Grant(node, term)
}

// leaseConn is a follower's connection to the leader for renewals.
type leaseConn struct {
	mu   sync.Mutex
	addr raft.ServerAddress
	conn net.Conn
}

// RenewLease asks the leader for a lease for this node and returns the
// duration granted, counted from before the call. It fails (and the lease
// runs out) when there is no leader, the leader cannot confirm it leads,
// or ctx ends first.
func (c *Cluster) RenewLease(ctx context.Context) (time.Duration, error) {
	switch c.raft.State() {
	case raft.Leader:
		return c.grantLease(c.cfg.Name)
	case raft.Shutdown:
		return 0, ErrClosed
	}
	addr, id := c.raft.LeaderWithID()
	if addr == "" || id == raft.ServerID(c.cfg.Name) {
		return 0, fmt.Errorf("lease for %s: %w", c.cfg.Name, ErrNoLeader)
	}
	if c.cfg.Forward == nil {
		return 0, fmt.Errorf("lease for %s: %w: no Forward dialer configured", c.cfg.Name, ErrNotLeader)
	}
	lc := &c.lease
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.conn != nil && lc.addr != addr {
		lc.conn.Close()
		lc.conn = nil
	}
	if lc.conn == nil {
		conn, err := c.cfg.Forward.Dial(ctx, addr)
		if err != nil {
			return 0, fmt.Errorf("lease for %s: dial leader %s at %s: %w", c.cfg.Name, id, addr, err)
		}
		lc.conn, lc.addr = conn, addr
	}
	d, err := c.askLease(ctx, lc.conn)
	if err != nil {
		var st statusErr
		if !errors.As(err, &st) { // the connection is in an unknown state
			lc.conn.Close()
			lc.conn = nil
		}
		return 0, fmt.Errorf("lease for %s from leader %s: %w", c.cfg.Name, id, err)
	}
	return d, nil
}

// statusErr is an answer that refused the lease; the connection is fine.
type statusErr struct{ error }

func (e statusErr) Unwrap() error { return e.error }

func (c *Cluster) askLease(ctx context.Context, conn net.Conn) (time.Duration, error) {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(defaultForwardTimeout)
	}
	_ = conn.SetDeadline(dl)
	p, err := json.Marshal(rpcRequest{V: rpcVersion, Op: opLease, Node: c.cfg.Name, TimeoutMS: max(time.Until(dl).Milliseconds(), 1)})
	if err != nil {
		return 0, err
	}
	if err := writeFrame(conn, p); err != nil {
		return 0, ctxOr(ctx, err)
	}
	p, err = readFrame(conn)
	if err != nil {
		return 0, ctxOr(ctx, err)
	}
	resp, err := decodeResponse(p)
	if err != nil {
		return 0, err
	}
	if resp.Code != "" {
		return 0, statusErr{decodeError(resp.Code, resp.Error)}
	}
	if resp.LeaseMS <= 0 {
		return 0, fmt.Errorf("%w: an answer without a lease", ErrInvalid)
	}
	return time.Duration(resp.LeaseMS) * time.Millisecond, nil
}

// closeLease closes the renewal connection (Close).
func (c *Cluster) closeLease() {
	c.lease.mu.Lock()
	defer c.lease.mu.Unlock()
	if c.lease.conn != nil {
		c.lease.conn.Close()
		c.lease.conn = nil
	}
}
