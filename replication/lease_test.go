package replication

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gateLease is a Lease a test opens and closes.
type gateLease struct {
	mu   sync.Mutex
	open bool
	ch   chan struct{} // closed when opened
}

func newGateLease() *gateLease { return &gateLease{ch: make(chan struct{})} }

func (g *gateLease) set(open bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if open && !g.open {
		close(g.ch)
	} else if !open && g.open {
		g.ch = make(chan struct{})
	}
	g.open = open
}

func (g *gateLease) Await(ctx context.Context) error {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestMirrorWaitsForItsLease: without the lease no I/O of any kind starts
// (nothing reaches the local copy or a replica); it waits, and goes on
// when the lease comes back, or ends with its context.
func TestMirrorWaitsForItsLease(t *testing.T) {
	const size = 1 << 20
	c := newTestCluster(t, size, "r1")
	cfg := c.config(1)
	lease := newGateLease()
	lease.set(true)
	cfg.Lease = lease
	m := c.start(cfg)
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	block4k := func(b byte) []byte {
		p := make([]byte, 4096)
		for i := range p {
			p[i] = b
		}
		return p
	}
	if err := m.WriteAt(bg, block4k(1), 0, false); err != nil {
		t.Fatal(err)
	}
	lease.set(false)

	ops := []struct {
		name string
		run  func(ctx context.Context) error
	}{
		{"read", func(ctx context.Context) error { return m.ReadAt(ctx, make([]byte, 4096), 0) }},
		{"write", func(ctx context.Context) error { return m.WriteAt(ctx, block4k(2), 0, false) }},
		{"unmap", func(ctx context.Context) error { return m.Unmap(ctx, 8192, 4096) }},
		{"flush", func(ctx context.Context) error { return m.Flush(ctx) }},
		{"mapping", func(ctx context.Context) error { _, _, err := m.Mapping(ctx, 0); return err }},
	}
	for _, op := range ops {
		ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
		err := op.run(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s without the lease: %v, want it to wait until its context ended", op.name, err)
		}
	}
	// Nothing was written while waiting.
	got := make([]byte, 4096)
	check := func(what string, want []byte) {
		t.Helper()
		for name, cp := range map[string]*memCopy{"the primary": c.local, "r1": c.nodes["r1"].copy} {
			if err := cp.ReadAt(bg, got, 0); err != nil {
				t.Fatal(err)
			}
			assertSame(t, name+" block 0 "+what, got, want)
		}
	}
	check("after writes waiting for the lease ended", block4k(1))

	// A write waiting for the lease goes on once it is back.
	done := make(chan error, 1)
	go func() { done <- m.WriteAt(bg, block4k(3), 0, false) }()
	select {
	case err := <-done:
		t.Fatalf("write finished without the lease: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	lease.set(true)
	if err := <-done; err != nil {
		t.Fatalf("write after the lease came back: %v", err)
	}
	check("after the lease came back", block4k(3))
}

// TestFailDropsAStalledReplica: a replica that stops answering (its node
// frozen) holds the writes until ReplicaTimeout; Fail, for a replica the
// cluster knows is gone, completes them at once: the regions it misses are
// persisted, it is dropped, and it is resynced once it answers again.
func TestFailDropsAStalledReplica(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	stall := make(chan struct{})
	var once sync.Once
	var stalled atomic.Bool
	c.nodes["r1"].srv.beforeApply = func(Message) {
		if stalled.Load() {
			<-stall
		}
	}
	t.Cleanup(func() { once.Do(func() { close(stall) }) })
	cfg := c.config(1)
	cfg.ReplicaTimeout = time.Minute
	m := c.start(cfg)
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	stalled.Store(true)

	done := make(chan error, 1)
	go func() { done <- m.WriteAt(bg, make([]byte, 4096), 0, false) }()
	select {
	case err := <-done:
		t.Fatalf("a write finished while its replica stalled: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	m.Fail("r1", time.Hour, errors.New("its node's lease ended"))
	select {
	case err := <-done:
		t.Fatalf("Fail failed a replica whose request had not waited that long: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	m.Fail("r1", 50*time.Millisecond, errors.New("its node's lease ended"))
	if err := <-done; err != nil {
		t.Fatalf("the write after the stalled replica was failed: %v", err)
	}
	if n := c.dropCount(); n != 1 {
		t.Errorf("r1 dropped %d times, want 1", n)
	}
	if d, err := c.dirty.Dirty(testVol, "r1"); err != nil || len(d) == 0 {
		t.Errorf("r1's dirty map after the drop: %v, %v; want the written region", d, err)
	}
	stalled.Store(false)
	once.Do(func() { close(stall) })
	m.Kick("r1")
	waitFor(t, "r1 back in sync", inSync(m, "r1"))
}
