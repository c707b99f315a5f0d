package replication

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tandem.io/tandem/volume/block"
)

// load runs writers (worker w owns the 4 KiB blocks numbered w mod
// workers, so writes never overlap) and a flusher until stop.
type load struct {
	stop  atomic.Bool
	wrote atomic.Int64
	wg    sync.WaitGroup
	errMu sync.Mutex
	errs  []error
}

func startLoad(m *Mirror, size int64, workers int) *load {
	l := &load{}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for !l.stop.Load() {
				blk := rng.Int64N(size/block.PhysicalBlockSize/int64(workers))*int64(workers) + int64(w)
				if err := m.WriteAt(bg, randBytes(rng, block.PhysicalBlockSize), blk*block.PhysicalBlockSize, false); err != nil {
					l.fail(err)
					return
				}
				l.wrote.Add(1)
			}
		}()
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for !l.stop.Load() {
			if err := m.Flush(bg); err != nil {
				l.fail(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return l
}

func (l *load) fail(err error) {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	l.errs = append(l.errs, err)
}

// more waits for n more writes.
func (l *load) more(t *testing.T, n int64) {
	t.Helper()
	from := l.wrote.Load()
	waitFor(t, "writes", func() bool { return l.wrote.Load() >= from+n || l.failed() })
}

func (l *load) failed() bool {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return len(l.errs) > 0
}

// end stops the load and fails the test if an I/O failed.
func (l *load) end(t *testing.T) {
	t.Helper()
	l.stop.Store(true)
	l.wg.Wait()
	for _, err := range l.errs {
		t.Errorf("I/O failed: %v", err)
	}
}

func serverConns(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// TestAddReplicaUnderLoad: a replica added while writes run is rebuilt,
// rejoins, and ends with a copy identical to the others.
func TestAddReplicaUnderLoad(t *testing.T) {
	const size = 2 << 20
	c := newTestCluster(t, size, "r1", "r2")
	rng := rand.New(rand.NewPCG(12, 12))
	c.nodes["r2"].copy.setRaw(0, randBytes(rng, size)) // junk: a rebuild must overwrite it
	cfg := c.config(1)
	cfg.InSync = []string{"r1"}
	m := c.start(cfg)
	l := startLoad(m, size, 8)
	l.more(t, 200)
	if err := m.AddReplica("r2", true); err != nil {
		t.Fatal(err)
	}
	if got := m.Replicas(); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Errorf("replicas %v", got)
	}
	waitFor(t, "r2 in sync", inSync(m, "r2"))
	l.more(t, 200) // writes go to it as an in-sync replica
	l.end(t)
	local := c.local.snapshot()
	assertSame(t, "local vs r1", local, c.nodes["r1"].copy.snapshot())
	assertSame(t, "local vs r2", local, c.nodes["r2"].copy.snapshot())
	if c.rejoinCount() != 1 || c.rejoins[0] != "r2" {
		t.Errorf("rejoins %v, want [r2]", c.rejoins)
	}
	if d, _ := c.dirty.Dirty(testVol, "r2"); len(d) != 0 {
		t.Errorf("r2 in sync with dirty regions %v", d)
	}
	// Adding it again changes nothing.
	if err := m.AddReplica("r2", true); err != nil {
		t.Fatal(err)
	}
	if got := m.Replicas(); len(got) != 2 {
		t.Errorf("replicas %v after adding r2 twice", got)
	}
	if st := replicaStatus(m, "r2"); st.State != InSync {
		t.Errorf("r2 %v after being added again", st.State)
	}
	if c.dropCount() != 0 {
		t.Errorf("drops %v", c.drops)
	}
}

// TestAddReplicaIncremental: a replica added with full == false copies
// only the regions its dirty map holds.
func TestAddReplicaIncremental(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	cfg := c.config(1)
	cfg.InSync = nil
	m := c.start(cfg)
	if err := m.WriteAt(bg, bytes.Repeat([]byte{7}, 4096), 3<<16, false); err != nil {
		t.Fatal(err)
	}
	c.dirty.Mark(testVol, "r1", []uint64{3}) // what a former primary recorded
	if err := m.AddReplica("r1", false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	if st := replicaStatus(m, "r1"); st.RegionsCopied != 1 {
		t.Errorf("copied %d regions, want the 1 dirty", st.RegionsCopied)
	}
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
}

func TestAddReplicaRefused(t *testing.T) {
	c := newTestCluster(t, 1<<20)
	m := c.start(c.config(1))
	for _, name := range []string{"", "p", "@active", "a@b"} {
		if err := m.AddReplica(name, true); err == nil {
			t.Errorf("AddReplica(%q) accepted", name)
		}
	}
	m.Close()
	if err := m.AddReplica("r9", true); !errors.Is(err, block.ErrClosed) {
		t.Errorf("AddReplica after Close: %v", err)
	}
}

// TestRemoveReplicaUnderLoad: writes go on, the removed replica's stream
// is closed and it gets nothing more, no Drop is called, and its dirty map
// is gone.
func TestRemoveReplicaUnderLoad(t *testing.T) {
	const size = 4 << 20
	c := newTestCluster(t, size, "r1", "r2", "r3")
	cfg := c.config(1)
	cfg.InSync, cfg.OutOfSync = []string{"r1", "r2"}, []string{"r3"}
	c.net.Disconnect("p", "r3")
	c.dirty.Mark(testVol, "r3", []uint64{1, 2})
	m := c.start(cfg)
	l := startLoad(m, size, 8)
	l.more(t, 200)
	if err := m.RemoveReplica("r2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "r2's stream closed", func() bool { return serverConns(c.nodes["r2"].srv) == 0 })
	got := c.nodes["r2"].copy.writes.Load()
	l.more(t, 200)
	if n := c.nodes["r2"].copy.writes.Load(); n != got {
		t.Errorf("r2 got %d writes after its removal", n-got)
	}
	// An out-of-sync one: its resync stops and its map goes.
	if err := m.RemoveReplica("r3"); err != nil {
		t.Fatal(err)
	}
	l.more(t, 100)
	l.end(t)
	if got := m.Replicas(); !slices.Equal(got, []string{"r1"}) {
		t.Errorf("replicas %v", got)
	}
	if c.dropCount() != 0 {
		t.Errorf("drops %v for removed replicas", c.drops)
	}
	for _, r := range []string{"r2", "r3"} {
		if c.dirty.exists(r) {
			t.Errorf("%s: dirty map still there", r)
		}
	}
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
	if err := m.RemoveReplica("r2"); err != nil {
		t.Errorf("removing an unknown replica: %v", err)
	}
}

// TestRemoveReplicaWithWritesStuck: writes waiting for a replica that does
// not answer complete, without Drop, when it is removed.
func TestRemoveReplicaWithWritesStuck(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1", "r2")
	release := make(chan struct{})
	c.nodes["r2"].copy.setHook(func(off, n int64) error {
		<-release
		return errInjected
	})
	t.Cleanup(func() { close(release) })
	cfg := c.config(1)
	cfg.ReplicaTimeout = time.Minute // no drop for the timeout
	m := c.start(cfg)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- m.WriteAt(bg, bytes.Repeat([]byte{byte(i)}, 4096), int64(i)<<16, false)
		}()
	}
	waitFor(t, "writes stuck on r2", func() bool { return replicaStatus(m, "r2").Outstanding == 8 })
	if err := m.RemoveReplica("r2"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("write in flight to the removed replica: %v", err)
		}
	}
	if c.dropCount() != 0 {
		t.Errorf("drops %v", c.drops)
	}
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
}

// TestPlacementChangesRace changes the replica set over and over while
// writes, flushes, barriers, verifies, Status and Kick run.
func TestPlacementChangesRace(t *testing.T) {
	const size = 1 << 20
	c := newTestCluster(t, size, "r1", "r2", "r3")
	cfg := c.config(1)
	cfg.InSync = []string{"r1", "r2"}
	cfg.FullRebuild = []string{"r3"}
	m := c.start(cfg)
	l := startLoad(m, size, 4)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for i := 0; !l.stop.Load(); i++ {
			switch i % 4 {
			case 0:
				if err := m.Barrier(bg, []byte("op"), func() error { return nil }); err != nil {
					l.fail(err)
				}
			case 1:
				if diffs, err := m.Verify(bg); err != nil || len(diffs) != 0 {
					l.fail(errors.Join(err, errors.New("verify found differences")))
				}
			default:
				m.Status()
				m.Replicas()
				m.Kick("r3")
				time.Sleep(time.Millisecond)
			}
		}
	}()
	for i := range 4 {
		name := []string{"r2", "r3"}[i%2]
		if err := m.RemoveReplica(name); err != nil {
			t.Fatal(err)
		}
		l.more(t, 30)
		if err := m.AddReplica(name, true); err != nil {
			t.Fatal(err)
		}
		l.more(t, 30)
	}
	waitFor(t, "every replica in sync", func() bool {
		return inSync(m, "r1")() && inSync(m, "r2")() && inSync(m, "r3")()
	})
	l.end(t)
	local := c.local.snapshot()
	for _, n := range []string{"r1", "r2", "r3"} {
		assertSame(t, "local vs "+n, local, c.nodes[n].copy.snapshot())
	}
	if c.dropCount() != 0 {
		t.Errorf("drops %v", c.drops)
	}
}
