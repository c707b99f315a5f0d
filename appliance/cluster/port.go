package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// A node's standby target port passes the few commands it must process
// but cannot decide alone (PERSISTENT RESERVE OUT: the reservation state
// lives with the primary) to the volume's primary over the node's RPC
// link (opPort), and answers with the primary's result. The primary runs
// the command as if it came through the standby port's I_T nexus.

// opPort asks a volume's primary to run a command for another node's port.
const opPort = "port"

// PortCommand is a command a node's target port passes to the primary.
type PortCommand struct {
	Volume string `json:"volume"`
	// The I_T nexus it came through (scsi.Nexus).
	InitiatorPort  string `json:"initiator_port"`
	TargetPort     string `json:"target_port"`
	RelativePortID uint16 `json:"relative_port_id"`
	PortGroup      uint16 `json:"port_group"`
	CDB            []byte `json:"cdb"`
	Data           []byte `json:"data,omitempty"`
}

// PortResult is the primary's answer: a SCSI status, its sense data, and
// the Data-In.
type PortResult struct {
	Status byte   `json:"status"`
	Sense  []byte `json:"sense,omitempty"`
	Data   []byte `json:"data,omitempty"`
}

// maxPortData bounds a passed command's data (a PERSISTENT RESERVE OUT
// parameter list is at most a few KiB).
const maxPortData = 64 << 10

func (p *PortCommand) check() error {
	switch {
	case p.Volume == "":
		return fmt.Errorf("%w: a port command for no volume", ErrInvalid)
	case p.InitiatorPort == "" || p.TargetPort == "":
		// Target port "" means every port to the reservation code.
		return fmt.Errorf("%w: a port command through no I_T nexus (initiator port %q, target port %q)", ErrInvalid, p.InitiatorPort, p.TargetPort)
	case len(p.CDB) < 6 || len(p.CDB) > 16:
		return fmt.Errorf("%w: a %d-byte CDB", ErrInvalid, len(p.CDB))
	case len(p.Data) > maxPortData:
		return fmt.Errorf("%w: %d bytes of data, at most %d", ErrInvalid, len(p.Data), maxPortData)
	}
	return nil
}

// RunOnPrimary passes cmd to node, the volume's primary, and returns its
// result. An error says the command did not run there or its outcome is
// unknown.
func (c *Cluster) RunOnPrimary(ctx context.Context, node string, cmd PortCommand) (PortResult, error) {
	if err := cmd.check(); err != nil {
		return PortResult{}, err
	}
	n, ok := c.State().Nodes[node]
	if !ok {
		return PortResult{}, fmt.Errorf("run on %s: %w: not in the catalog", node, ErrNotFound)
	}
	if c.cfg.Forward == nil {
		return PortResult{}, fmt.Errorf("run on %s: no dialer configured", node)
	}
	conn, err := c.cfg.Forward.Dial(ctx, raft.ServerAddress(n.Link))
	if err != nil {
		return PortResult{}, fmt.Errorf("run on %s: dial %s: %w", node, n.Link, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req := rpcRequest{V: rpcVersion, Op: opPort, Port: &cmd, TimeoutMS: 10_000}
	if dl, ok := ctx.Deadline(); ok {
		req.TimeoutMS = max(time.Until(dl).Milliseconds(), 1)
		_ = conn.SetDeadline(dl)
	}
	p, err := json.Marshal(req)
	if err != nil {
		return PortResult{}, err
	}
	if err := writeFrame(conn, p); err != nil {
		return PortResult{}, fmt.Errorf("run on %s: %w: sending: %v", node, ErrOutcomeUnknown, ctxOr(ctx, err))
	}
	if p, err = readFrame(conn); err != nil {
		return PortResult{}, fmt.Errorf("run on %s: %w: waiting for the answer: %v", node, ErrOutcomeUnknown, ctxOr(ctx, err))
	}
	resp, err := decodeResponse(p)
	if err != nil {
		return PortResult{}, fmt.Errorf("run on %s: %w: %v", node, ErrOutcomeUnknown, err)
	}
	if resp.Code != "" {
		return PortResult{}, fmt.Errorf("run on %s: %w", node, decodeError(resp.Code, resp.Error))
	}
	if resp.Port == nil {
		return PortResult{}, fmt.Errorf("run on %s: %w: an answer without the command's result", node, ErrOutcomeUnknown)
	}
	return *resp.Port, nil
}

// handlePort runs a port command for another node (cfg.Port).
func (c *Cluster) handlePort(ctx context.Context, req rpcRequest) rpcResponse {
	fail := func(err error) rpcResponse { return rpcResponse{Code: errorCode(err), Error: err.Error()} }
	if c.cfg.Port == nil {
		return fail(fmt.Errorf("%s: %w: this node runs no port commands", c.cfg.Name, ErrUnsupported))
	}
	timeout := time.Duration(min(max(req.TimeoutMS, 1), 30_000)) * time.Millisecond
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := c.cfg.Port(ctx, *req.Port)
	if err != nil {
		if !errors.Is(err, ErrNotPrimary) && !errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w: %v", ErrNotPrimary, err)
		}
		return fail(err)
	}
	return rpcResponse{Port: &res}
}
