package cluster

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// firstDialBlocks is a Dialer whose first Dial waits until released.
type firstDialBlocks struct {
	Dialer
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (d *firstDialBlocks) Dial(ctx context.Context, addr raft.ServerAddress) (net.Conn, error) {
	first := false
	d.once.Do(func() { first = true })
	if first {
		close(d.entered)
		select {
		case <-d.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return d.Dialer.Dial(ctx, addr)
}

// TestReview10RenewalRacingCloseLeavesNoConnectionOpen: Close runs
// closeLease before raft.Shutdown, so a RenewLease that passed its
// raft.State() check meanwhile and waits for the lease lock gets it after
// closeLease, dials the leader and keeps that connection in c.lease.conn,
// which nothing closes any more (and the leader's handler for it waits on
// it). Close also waits, under that lock, for a renewal's dial and answer
// (up to its context). Here: one renewal holds the lock in its dial, Close
// queues on the lock, a second renewal queues behind it.
func TestReview10RenewalRacingCloseLeavesNoConnectionOpen(t *testing.T) {
	tc := newTestCluster(t)
	g := map[string]*grants{"a": {}, "b": {}, "c": {}}
	var bd *firstDialBlocks
	tc.tweak = func(c *Config) {
		c.Grant = g[c.Name].grant
		if c.Name == "b" {
			bd = &firstDialBlocks{Dialer: c.Forward, entered: make(chan struct{}), release: make(chan struct{})}
			c.Forward = bd
		}
	}
	a := tc.bootstrapData("a")
	tc.admit(a, RoleData, "b", "c")
	tc.converged("a", "b", "c")
	tc.leader("a", "b", "c")
	b := tc.nodes["b"]
	if b.c.IsLeader() {
		t.Skip("b leads: its renewals do not dial")
	}
	delete(tc.nodes, "b") // closed here, not by the cleanup

	renewed := func() chan error {
		ch := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := b.c.RenewLease(ctx)
			ch <- err
		}()
		return ch
	}
	r1 := renewed()
	<-bd.entered // r1 holds the lease lock, dialing
	closed := make(chan error, 1)
	go func() { closed <- b.c.Close() }()
	<-b.served                         // Close cancelled its context: closeLease is next
	time.Sleep(100 * time.Millisecond) // closeLease waits for the lock
	r2 := renewed()
	time.Sleep(100 * time.Millisecond) // r2 waits for the lock behind it
	close(bd.release)
	<-r1
	if err := <-closed; err != nil {
		t.Errorf("close b: %v", err)
	}
	err2 := <-r2
	b.c.lease.mu.Lock()
	conn := b.c.lease.conn
	b.c.lease.mu.Unlock()
	if conn != nil {
		conn.Close()
		t.Errorf("a renewal racing Close left a connection to the leader open after Close returned (that renewal: %v)", err2)
	}
}
