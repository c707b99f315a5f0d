package link

import (
	"context"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// StreamLayer returns a raft.StreamLayer over links of PurposeRaft, for
// raft.NewNetworkTransport: it accepts on l and dials with cfg. Closing it
// closes the raft listener of l, not l.
func StreamLayer(l *Listener, cfg Config) raft.StreamLayer {
	return &streamLayer{Listener: l.Accept(PurposeRaft), cfg: cfg}
}

type streamLayer struct {
	net.Listener
	cfg Config
}

// Dial connects to a raft server's link listener.
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := Dial(ctx, string(addr), PurposeRaft, s.cfg)
	if err != nil {
		return nil, err // not a nil *Conn in a non-nil net.Conn
	}
	return c, nil
}
