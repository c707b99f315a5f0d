package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The forwarding RPC: a follower sends a command to the leader over a
// connection cfg.Forward dials (an authenticated link in production) and
// reads the result. Each message is one frame: a 4-byte big-endian length,
// then that many bytes of JSON. A connection may carry several requests,
// one at a time.

const (
	// maxFrame bounds a frame's payload; larger frames are refused before
	// anything is allocated for them.
	maxFrame = 8 << 20
	// rpcVersion is the version of the request encoding.
	rpcVersion = 1
	// opPropose asks the leader to commit a command.
	opPropose = "propose"
	// opLease asks the leader for a lease for Node (Cluster.RenewLease).
	opLease = "lease"
	// defaultForwardTimeout bounds a forwarded proposal on the leader when
	// the follower's context has no deadline; maxForwardTimeout bounds it
	// in any case.
	defaultForwardTimeout = 30 * time.Second
	maxForwardTimeout     = 5 * time.Minute
	// rpcIdle closes a connection that sends no request for this long.
	rpcIdle = 5 * time.Minute
)

// rpcRequest is a follower's request to the leader.
type rpcRequest struct {
	V  int    `json:"v"`
	Op string `json:"op"`
	// Cmd is the encoded command (encodeCommand), for opPropose.
	Cmd json.RawMessage `json:"cmd,omitempty"`
	// Node is the node asking for a lease, for opLease.
	Node string `json:"node,omitempty"`
	// Port is the command another node's port passes, for opPort.
	Port *PortCommand `json:"port,omitempty"`
	// TimeoutMS is how long the follower waits; the leader gives up then.
	TimeoutMS int64 `json:"timeout_ms"`
}

// rpcResponse is the leader's answer: the log index the command was
// applied at, or an error code and message.
type rpcResponse struct {
	Index uint64 `json:"index"`
	// LeaseMS is the lease granted, in milliseconds, and Lapsed the nodes
	// whose leases have ended (opLease).
	LeaseMS int64    `json:"lease_ms,omitempty"`
	Lapsed  []string `json:"lapsed,omitempty"`
	// Port is the primary's result of a port command (opPort).
	Port  *PortResult `json:"port,omitempty"`
	Code  string      `json:"code,omitempty"`
	Error string      `json:"error,omitempty"`
}

// writeFrame writes p as one frame.
func writeFrame(w io.Writer, p []byte) error {
	if len(p) > maxFrame {
		return fmt.Errorf("write frame: %w: %d bytes, at most %d", ErrTooLarge, len(p), maxFrame)
	}
	b := make([]byte, 4, 4+len(p))
	binary.BigEndian.PutUint32(b, uint32(len(p)))
	_, err := w.Write(append(b, p...))
	return err
}

// readFrame reads one frame, refusing one longer than maxFrame before
// allocating it.
func readFrame(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > maxFrame {
		return nil, fmt.Errorf("read frame: %w: %d bytes, at most %d", ErrTooLarge, n, maxFrame)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, fmt.Errorf("read frame of %d bytes: %w", n, noEOF(err))
	}
	return p, nil
}

// noEOF turns a clean EOF inside a frame into ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func decodeRequest(p []byte) (rpcRequest, error) {
	var req rpcRequest
	if err := strictUnmarshal(p, &req); err != nil {
		return rpcRequest{}, fmt.Errorf("decode request: %w: %v", ErrInvalid, err)
	}
	if req.V != rpcVersion {
		return rpcRequest{}, fmt.Errorf("decode request: %w: version %d (this node knows %d)", ErrUnsupported, req.V, rpcVersion)
	}
	switch {
	case req.Op != opPropose && req.Op != opLease && req.Op != opPort:
		return rpcRequest{}, fmt.Errorf("decode request: %w: operation %q", ErrUnsupported, req.Op)
	case req.Op == opLease && req.Node == "":
		return rpcRequest{}, fmt.Errorf("decode request: %w: a lease for no node", ErrInvalid)
	case req.Op == opPort && req.Port == nil:
		return rpcRequest{}, fmt.Errorf("decode request: %w: a port command without one", ErrInvalid)
	case req.Op == opPort:
		if err := req.Port.check(); err != nil {
			return rpcRequest{}, fmt.Errorf("decode request: %w", err)
		}
	}
	if req.TimeoutMS < 0 {
		return rpcRequest{}, fmt.Errorf("decode request: %w: timeout %d ms", ErrInvalid, req.TimeoutMS)
	}
	return req, nil
}

func decodeResponse(p []byte) (rpcResponse, error) {
	var resp rpcResponse
	if err := strictUnmarshal(p, &resp); err != nil {
		return rpcResponse{}, fmt.Errorf("decode response: %w: %v", ErrInvalid, err)
	}
	if resp.Code == "" && resp.Index == 0 && resp.LeaseMS <= 0 && resp.Port == nil {
		return rpcResponse{}, fmt.Errorf("decode response: %w: neither an index, a lease, a port result nor an error", ErrInvalid)
	}
	return resp, nil
}

// ServeRPC serves followers' forwarded proposals on ln (the rpc purpose of
// the node's link) until ctx is done or the Cluster is closed; then it
// closes ln and every connection, waits for their handlers and returns nil.
// It returns ln.Accept's error if accepting fails otherwise. A proposal
// reaching a node that is not the leader is answered with ErrNotLeader, and
// the follower retries with the new leader.
func (c *Cluster) ServeRPC(ctx context.Context, ln net.Listener) error {
	if !c.track() {
		ln.Close()
		return ErrClosed
	}
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopOnClose := context.AfterFunc(c.ctx, cancel)
	defer stopOnClose()
	stopListener := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopListener()

	var handlers sync.WaitGroup
	defer handlers.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("serve cluster rpc: accept: %w", err)
		}
		handlers.Go(func() { c.serveConn(ctx, conn) })
	}
}

// serveConn answers requests on conn until it fails, idles or ctx ends.
func (c *Cluster) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	for {
		_ = conn.SetReadDeadline(time.Now().Add(rpcIdle))
		p, err := readFrame(conn)
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				c.log.Debug("cluster rpc: closing connection", "remote", conn.RemoteAddr(), "err", err)
			}
			return
		}
		resp := c.handleRequest(ctx, p)
		out, err := json.Marshal(resp)
		if err == nil {
			_ = conn.SetWriteDeadline(time.Now().Add(rpcIdle))
			err = writeFrame(conn, out)
		}
		if err != nil {
			c.log.Debug("cluster rpc: answering", "remote", conn.RemoteAddr(), "err", err)
			return
		}
	}
}

// handleRequest commits a forwarded command if this node is the leader.
func (c *Cluster) handleRequest(ctx context.Context, p []byte) rpcResponse {
	fail := func(err error) rpcResponse {
		return rpcResponse{Code: errorCode(err), Error: err.Error()}
	}
	req, err := decodeRequest(p)
	if err != nil {
		return fail(err)
	}
	if req.Op == opPort {
		return c.handlePort(ctx, req)
	}
	if req.Op == opLease {
		g, err := c.grantLease(req.Node)
		if err != nil {
			return fail(err)
		}
		return rpcResponse{LeaseMS: g.Duration.Milliseconds(), Index: g.Index, Lapsed: g.Lapsed}
	}
	if cmd, err := decodeCommand(req.Cmd); err != nil {
		return fail(err)
	} else if err := proposable(cmd); err != nil {
		return fail(err)
	}
	if c.raft.State() != raft.Leader {
		return fail(fmt.Errorf("%s: %w", c.cfg.Name, ErrNotLeader))
	}
	timeout := defaultForwardTimeout
	if req.TimeoutMS > 0 {
		timeout = min(time.Duration(req.TimeoutMS)*time.Millisecond, maxForwardTimeout)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	index, err := c.applyLocal(ctx, req.Cmd)
	if err != nil {
		var r retryable
		if errors.As(err, &r) {
			err = r.err
		}
		if errors.Is(err, ErrClosed) { // this leader is shutting down: try the next
			err = fmt.Errorf("%s is shutting down: %w", c.cfg.Name, ErrNotLeader)
		}
		return fail(err)
	}
	return rpcResponse{Index: index}
}

// forward sends the encoded command to the leader at addr and returns the
// index it was applied at there. Failures before the request is sent are
// retryable; failures after it are ErrOutcomeUnknown.
func (c *Cluster) forward(ctx context.Context, leader string, addr raft.ServerAddress, cmd []byte) (uint64, error) {
	if c.cfg.Forward == nil {
		return 0, fmt.Errorf("forward to leader %s: %w: no Forward dialer configured", leader, ErrNotLeader)
	}
	conn, err := c.cfg.Forward.Dial(ctx, addr)
	if err != nil {
		return 0, retryable{fmt.Errorf("dial leader %s at %s: %w", leader, addr, err)}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req := rpcRequest{V: rpcVersion, Op: opPropose, Cmd: cmd}
	if dl, ok := ctx.Deadline(); ok {
		req.TimeoutMS = max(time.Until(dl).Milliseconds(), 1)
		_ = conn.SetDeadline(dl)
	}
	p, err := json.Marshal(req)
	if err != nil {
		return 0, fmt.Errorf("forward to leader %s: %w", leader, err)
	}
	if len(p) > maxFrame {
		return 0, fmt.Errorf("forward to leader %s: %w: a %d-byte request, at most %d", leader, ErrTooLarge, len(p), maxFrame)
	}
	if err := writeFrame(conn, p); err != nil {
		return 0, fmt.Errorf("forward to leader %s at %s: %w: sending: %v", leader, addr, ErrOutcomeUnknown, ctxOr(ctx, err))
	}
	p, err = readFrame(conn)
	if err != nil {
		return 0, fmt.Errorf("forward to leader %s at %s: %w: waiting for the answer: %v", leader, addr, ErrOutcomeUnknown, ctxOr(ctx, err))
	}
	resp, err := decodeResponse(p)
	if err != nil {
		return 0, fmt.Errorf("forward to leader %s at %s: %w: %v", leader, addr, ErrOutcomeUnknown, err)
	}
	if resp.Code != "" {
		err := decodeError(resp.Code, resp.Error)
		if errors.Is(err, ErrNotLeader) {
			return 0, retryable{err}
		}
		return 0, err
	}
	return resp.Index, nil
}

// ctxOr prefers ctx's error (the connection was closed because it ended).
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}
