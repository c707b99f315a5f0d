package replication

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"tandem.io/tandem/replication/memnet"
	"tandem.io/tandem/volume/block"
)

const testVol = "vol-1"

// testLogger logs to stderr when TANDEM_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("TANDEM_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testNode is a replica node: its copy of testVol and its Server.
type testNode struct {
	name   string
	copy   *memCopy
	copies *memCopies
	epochs *memEpochs
	srv    *Server
}

// testCluster is a primary node "p" with a local copy and replica nodes
// on an in-memory network, with Drop and Rejoin callbacks that record.
type testCluster struct {
	t       *testing.T
	net     *memnet.Network
	primary string
	local   *memCopy
	nodes   map[string]*testNode
	dirty   *memDirtyLog
	size    int64

	mu       sync.Mutex
	drops    []string
	rejoins  []string
	dropErr  error
	onDrop   func(replica string)
	onRejoin func(replica string) error
}

func newTestCluster(t *testing.T, size int64, replicas ...string) *testCluster {
	c := &testCluster{t: t, net: memnet.New(0), primary: "p", local: newMemCopy(size),
		nodes: map[string]*testNode{}, dirty: newMemDirtyLog(), size: size}
	for _, name := range replicas {
		c.addNode(name)
	}
	return c
}

func (c *testCluster) addNode(name string) *testNode {
	n := &testNode{name: name, copy: newMemCopy(c.size), copies: newMemCopies(), epochs: newMemEpochs()}
	n.copies.add(testVol, n.copy)
	srv, err := NewServer(ServerConfig{Copies: n.copies, Epochs: n.epochs, Logger: testLogger()})
	if err != nil {
		c.t.Fatal(err)
	}
	n.srv = srv
	l, err := c.net.Listen(name)
	if err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		srv.Serve(context.Background(), l)
		close(done)
	}()
	c.t.Cleanup(func() {
		srv.Close()
		<-done
	})
	c.nodes[name] = n
	return n
}

func (c *testCluster) drop(ctx context.Context, replica string) error {
	c.mu.Lock()
	f, err := c.onDrop, c.dropErr
	c.drops = append(c.drops, replica)
	c.mu.Unlock()
	if f != nil {
		f(replica)
	}
	return err
}

func (c *testCluster) rejoin(ctx context.Context, replica string) error {
	c.mu.Lock()
	f := c.onRejoin
	c.rejoins = append(c.rejoins, replica)
	c.mu.Unlock()
	if f != nil {
		return f(replica)
	}
	return nil
}

func (c *testCluster) setDropErr(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropErr = err
}

func (c *testCluster) dropCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.drops)
}

func (c *testCluster) rejoinCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.rejoins)
}

// config is a MirrorConfig at epoch with every node in sync.
func (c *testCluster) config(epoch uint64) MirrorConfig {
	var names []string
	for n := range c.nodes {
		names = append(names, n)
	}
	slices.Sort(names)
	return MirrorConfig{
		VolumeID: testVol, Epoch: epoch, Self: c.primary, Local: c.local,
		InSync: names, Dialer: c.net.Dialer(c.primary), Dirty: c.dirty,
		RegionSize: 64 << 10, Drop: c.drop, Rejoin: c.rejoin,
		ReplicaTimeout: 2 * time.Second, DropTimeout: time.Second,
		Logger: testLogger(),
	}
}

func (c *testCluster) start(cfg MirrorConfig) *Mirror {
	c.t.Helper()
	m, err := NewMirror(context.Background(), cfg)
	if err != nil {
		c.t.Fatalf("NewMirror: %v", err)
	}
	c.t.Cleanup(func() { m.Close() })
	return m
}

// waitFor polls cond until it holds (failing the test after a generous
// limit: this is a liveness check, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func replicaStatus(m *Mirror, name string) ReplicaStatus {
	for _, s := range m.Status() {
		if s.Name == name {
			return s
		}
	}
	return ReplicaStatus{}
}

func inSync(m *Mirror, name string) func() bool {
	return func() bool { return replicaStatus(m, name).State == InSync }
}

// assertSame fails if the copies' bytes differ, naming the first region.
func assertSame(t *testing.T, what string, a, b []byte) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: sizes %d and %d", what, len(a), len(b))
	}
	for off := 0; off < len(a); off += block.PhysicalBlockSize {
		end := min(len(a), off+block.PhysicalBlockSize)
		if string(a[off:end]) != string(b[off:end]) {
			t.Fatalf("%s: differ in the block at %d", what, off)
		}
	}
}

// orderer issues I/O the way the target does (block.Device contract): an
// operation overlapping one in flight (at 4 KiB granularity) waits until
// that one returned, in issue order; others run concurrently, at most
// depth at once.
type orderer struct {
	mu    sync.Mutex
	cond  *sync.Cond
	busy  map[int64]bool
	wg    sync.WaitGroup
	slots chan struct{}
}

func newOrderer(depth int) *orderer {
	o := &orderer{busy: map[int64]bool{}, slots: make(chan struct{}, depth)}
	o.cond = sync.NewCond(&o.mu)
	return o
}

func (o *orderer) issue(off, n int64, fn func()) {
	first, last := off/block.PhysicalBlockSize, (off+n-1)/block.PhysicalBlockSize
	o.slots <- struct{}{}
	o.mu.Lock()
	for {
		free := true
		for b := first; b <= last && free; b++ {
			free = !o.busy[b]
		}
		if free {
			break
		}
		o.cond.Wait()
	}
	for b := first; b <= last; b++ {
		o.busy[b] = true
	}
	o.mu.Unlock()
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		fn()
		o.mu.Lock()
		for b := first; b <= last; b++ {
			delete(o.busy, b)
		}
		o.cond.Broadcast()
		o.mu.Unlock()
		<-o.slots
	}()
}

func (o *orderer) wait() { o.wg.Wait() }
