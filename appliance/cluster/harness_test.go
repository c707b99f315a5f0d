package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testNet is an in-memory network for clusters under test: raft over
// raft.InmemTransport and the forwarding RPC over net.Pipe, with
// partitions.
type testNet struct {
	mu        sync.Mutex                      // protects the maps
	trans     map[string]*raft.InmemTransport // by address
	listeners map[string]*pipeListener        // by address
	cut       map[[2]string]bool              // {from, to} cannot reach each other
}

func newTestNet() *testNet {
	return &testNet{trans: map[string]*raft.InmemTransport{}, listeners: map[string]*pipeListener{}, cut: map[[2]string]bool{}}
}

// transport returns a new raft transport at addr, connected to every other
// (replacing a previous one at addr, as a restarted node's).
func (n *testNet) transport(addr string) *raft.InmemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, tr := raft.NewInmemTransport(raft.ServerAddress(addr))
	n.trans[addr] = tr
	for a, other := range n.trans {
		if a == addr || n.cut[[2]string{addr, a}] {
			continue
		}
		tr.Connect(raft.ServerAddress(a), other)
		other.Connect(raft.ServerAddress(addr), tr)
	}
	return tr
}

// partition cuts every address of side from every other address (raft
// and RPC both ways).
func (n *testNet) partition(side ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	in := map[string]bool{}
	for _, a := range side {
		in[a] = true
	}
	for a, ta := range n.trans {
		for b, tb := range n.trans {
			if in[a] && !in[b] {
				n.cut[[2]string{a, b}], n.cut[[2]string{b, a}] = true, true
				ta.Disconnect(raft.ServerAddress(b))
				tb.Disconnect(raft.ServerAddress(a))
			}
		}
	}
}

// heal reconnects everything.
func (n *testNet) heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut = map[[2]string]bool{}
	for a, ta := range n.trans {
		for b, tb := range n.trans {
			if a != b {
				ta.Connect(raft.ServerAddress(b), tb)
			}
		}
	}
}

func (n *testNet) listen(addr string) *pipeListener {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := &pipeListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
	n.listeners[addr] = l
	return l
}

// dialer returns the Forward dialer of the node at from.
func (n *testNet) dialer(from string) Dialer { return netDialer{n, from} }

type netDialer struct {
	net  *testNet
	from string
}

func (d netDialer) Dial(ctx context.Context, addr raft.ServerAddress) (net.Conn, error) {
	d.net.mu.Lock()
	l := d.net.listeners[string(addr)]
	cut := d.net.cut[[2]string{d.from, string(addr)}]
	d.net.mu.Unlock()
	if l == nil || cut {
		return nil, fmt.Errorf("dial %s from %s: unreachable", addr, d.from)
	}
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
	case <-ctx.Done():
	}
	client.Close()
	server.Close()
	return nil, fmt.Errorf("dial %s from %s: connection refused", addr, d.from)
}

// pipeListener is a net.Listener fed by netDialer.
type pipeListener struct {
	addr  string
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr(l.addr) }

type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return string(a) }

// testCluster runs nodes on a testNet, each in its own directory.
type testCluster struct {
	t     *testing.T
	net   *testNet
	dir   string
	nodes map[string]*testNode
	// tweak adjusts every node's Config.
	tweak func(*Config)
}

type testNode struct {
	name, addr string
	c          *Cluster
	served     chan error // ServeRPC's result
}

func newTestCluster(t *testing.T) *testCluster {
	tc := &testCluster{t: t, net: newTestNet(), dir: t.TempDir(), nodes: map[string]*testNode{}}
	t.Cleanup(func() {
		for _, n := range tc.nodes {
			tc.stop(n.name)
		}
	})
	return tc
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// addrOf is node name's default link address.
func addrOf(name string) string { return "10.0.0." + name + ":7482" }

// start opens node name at its default address.
func (tc *testCluster) start(name string, bootstrap bool) *testNode {
	return tc.startAt(name, addrOf(name), bootstrap)
}

// startAt opens node name at addr from its directory, and serves its RPC.
func (tc *testCluster) startAt(name, addr string, bootstrap bool) *testNode {
	tc.t.Helper()
	cfg := Config{
		Name:      name,
		Dir:       filepath.Join(tc.dir, name),
		Transport: tc.net.transport(addr),
		Bootstrap: bootstrap,
		Forward:   tc.net.dialer(addr),
		Logger:    testLogger().With("node", name),
		// Short enough for fast tests, long enough that a loaded machine
		// running -race does not depose leaders at random.
		HeartbeatTimeout:   300 * time.Millisecond,
		ElectionTimeout:    300 * time.Millisecond,
		LeaderLeaseTimeout: 300 * time.Millisecond,
		CommitTimeout:      50 * time.Millisecond,
		noSync:             true,
	}
	if tc.tweak != nil {
		tc.tweak(&cfg)
	}
	c, err := Open(cfg)
	if err != nil {
		tc.t.Fatalf("open %s: %v", name, err)
	}
	n := &testNode{name: name, addr: addr, c: c, served: make(chan error, 1)}
	ln := tc.net.listen(addr)
	go func() { n.served <- c.ServeRPC(context.Background(), ln) }()
	tc.nodes[name] = n
	return n
}

// stop closes node name; its ServeRPC returns.
func (tc *testCluster) stop(name string) {
	tc.t.Helper()
	n := tc.nodes[name]
	if n == nil {
		return
	}
	delete(tc.nodes, name)
	if err := n.c.Close(); err != nil {
		tc.t.Errorf("close %s: %v", name, err)
	}
	if err := <-n.served; err != nil && !errors.Is(err, ErrClosed) {
		tc.t.Errorf("serve rpc of %s: %v", name, err)
	}
}

// eventually polls cond until it holds, failing after a generous bound
// (a liveness bound, not a timing assertion).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leader waits until one of the named nodes leads and every named node
// knows it, and returns it.
func (tc *testCluster) leader(names ...string) *testNode {
	tc.t.Helper()
	var found *testNode
	eventually(tc.t, fmt.Sprintf("a leader among %v", names), func() bool {
		found = nil
		for _, name := range names {
			if n := tc.nodes[name]; n.c.IsLeader() {
				found = n
			}
		}
		if found == nil {
			return false
		}
		for _, name := range names {
			if id, _ := tc.nodes[name].c.Leader(); id != found.name {
				return false
			}
		}
		return true
	})
	return found
}

// converged waits until the named nodes have the same state, and returns it.
func (tc *testCluster) converged(names ...string) State {
	tc.t.Helper()
	var s State
	eventually(tc.t, fmt.Sprintf("the same state on %v", names), func() bool {
		want := mustJSON(tc.t, tc.nodes[names[0]].c.State())
		for _, name := range names[1:] {
			if mustJSON(tc.t, tc.nodes[name].c.State()) != want {
				return false
			}
		}
		s = tc.nodes[names[0]].c.State()
		return true
	})
	return s
}

// bootstrap starts name as a new cluster and waits for its cluster ID.
func (tc *testCluster) bootstrap(name string) *testNode {
	tc.t.Helper()
	n := tc.start(name, true)
	eventually(tc.t, "the cluster ID", func() bool { return n.c.State().ClusterID != "" })
	return n
}

// admit starts each named node and admits it with role through leader.
// Admit is idempotent, so when leadership moves during it (a loaded
// machine), it is tried again on the new leader.
func (tc *testCluster) admit(leader *testNode, role Role, names ...string) {
	tc.t.Helper()
	for _, name := range names {
		var running []string
		for other := range tc.nodes {
			running = append(running, other)
		}
		n := tc.start(name, false)
		for attempt := 1; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := leader.c.Admit(ctx, Node{Name: name, Role: role, Link: n.addr})
			cancel()
			if err == nil {
				break
			}
			if attempt == 3 || !(errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, ErrNotLeader)) {
				tc.t.Fatalf("admit %s: %v", name, err)
			}
			tc.t.Logf("admit %s: %v; again", name, err)
			leader = tc.leader(running...)
		}
	}
}

func propose(t *testing.T, n *testNode, cmd Command) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	index, err := n.c.Propose(ctx, cmd)
	if err != nil {
		t.Fatalf("propose %T on %s: %v", cmd, n.name, err)
	}
	return index
}

func servers(t *testing.T, n *testNode) map[string]Server {
	t.Helper()
	list, err := n.c.Servers()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]Server{}
	for _, s := range list {
		m[s.ID] = s
	}
	return m
}

func countVoters(m map[string]Server) (voters, nonvoters int) {
	for _, s := range m {
		switch s.Suffrage {
		case Voter:
			voters++
		case Nonvoter:
			nonvoters++
		}
	}
	return voters, nonvoters
}
