package replication

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tandem.io/tandem/volume/block"
)

const testRegion = 64 << 10 // the region size of testCluster.config

// TestActivityLogRepairsCrash: the primary crashes with one write that
// reached the local copy and r2 but not r1, and one that reached both
// replicas but not the local copy. The next Mirror (the same node
// restarting: same epoch, DirtyLog and copies) makes those regions
// identical from the local copy before it serves.
func TestActivityLogRepairsCrash(t *testing.T) {
	const size = 1 << 20
	const x, y = 2*testRegion + 4096, 9 * testRegion // y: never written locally
	c := newTestCluster(t, size, "r1", "r2")
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the servers' cleanup waits for their requests
	var r1Armed, localArmed atomic.Bool
	r1Blocked, localBlocked := make(chan struct{}), make(chan struct{})
	// r1 holds the write at x before applying it; the next stream's
	// Hello supersedes it, so it never lands.
	c.nodes["r1"].srv.beforeApply = func(msg Message) {
		if w, ok := msg.(*Write); ok && w.Off == x && r1Armed.CompareAndSwap(true, false) {
			close(r1Blocked)
			<-release
		}
	}
	c.local.setHook(func(off, n int64) error {
		if off == y && localArmed.CompareAndSwap(true, false) {
			close(localBlocked)
			<-release
			return errInjected // the crash: it never reached the local disk
		}
		return nil
	})

	plog := &crashableLog{log: c.dirty}
	cfg := c.config(1)
	cfg.Dirty, cfg.Dialer = plog, c.net.Dialer("p1")
	cfg.Drop = func(ctx context.Context, r string) error {
		if plog.crashed.Load() {
			return errInjected // a crashed node commits nothing
		}
		return c.drop(ctx, r)
	}
	m1, err := NewMirror(bg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m1.WriteAt(bg, bytes.Repeat([]byte{1}, 8192), x, false); err != nil {
		t.Fatal(err)
	}
	if err := m1.Flush(bg); err != nil {
		t.Fatal(err)
	}
	r1Armed.Store(true)
	localArmed.Store(true)
	newX, newY := bytes.Repeat([]byte{2}, 8192), bytes.Repeat([]byte{3}, 4096)
	done := make(chan error, 2)
	at := func(cp *memCopy, off int64, n int) []byte { return cp.snapshot()[off : off+int64(n)] }
	// y first, applied by both replicas while the local copy holds it: a
	// replica applies a stream's writes without FUA in order, so one held
	// at x would keep y from r1.
	go func() { done <- m1.WriteAt(bg, newY, y, false) }()
	<-localBlocked
	waitFor(t, "the write at y on both replicas", func() bool {
		return bytes.Equal(at(c.nodes["r1"].copy, y, 4096), newY) && bytes.Equal(at(c.nodes["r2"].copy, y, 4096), newY)
	})
	go func() { done <- m1.WriteAt(bg, newX, x, false) }()
	<-r1Blocked
	waitFor(t, "the writes on the copies that get them", func() bool {
		return bytes.Equal(at(c.local, x, 8192), newX) && bytes.Equal(at(c.nodes["r2"].copy, x, 8192), newX) &&
			bytes.Equal(at(c.nodes["r1"].copy, y, 4096), newY) && bytes.Equal(at(c.nodes["r2"].copy, y, 4096), newY)
	})
	for _, reg := range []uint64{x / testRegion, y / testRegion} {
		if !c.dirty.has(testVol, ActivityLog, reg) {
			t.Fatalf("region %d not in the activity log while a write to it is in flight", reg)
		}
	}

	// The crash: the node's DirtyLog and links are gone with it.
	plog.crashed.Store(true)
	c.net.Disconnect("p1", "r1")
	c.net.Disconnect("p1", "r2")
	m2 := c.start(c.config(1))

	local := c.local.snapshot()
	assertSame(t, "local vs r1", local, c.nodes["r1"].copy.snapshot())
	assertSame(t, "local vs r2", local, c.nodes["r2"].copy.snapshot())
	if !bytes.Equal(local[x:x+8192], newX) {
		t.Error("the local copy, the reference, lost its write")
	}
	if mapped, _, _ := c.nodes["r1"].copy.Mapping(bg, y); mapped {
		t.Error("r1 still allocated where the local copy is not")
	}
	if diffs, err := m2.Verify(bg); err != nil || len(diffs) != 0 {
		t.Errorf("verify after the repair: %v, %v", diffs, err)
	}
	if d, _ := c.dirty.Dirty(testVol, ActivityLog); len(d) != 0 {
		t.Errorf("activity log after the repair: %v", d)
	}
	if c.dropCount() != 0 {
		t.Errorf("drops %v", c.drops)
	}
	unblock()
	for range 2 {
		<-done // they fail: their primary crashed
	}
	m1.Close()
}

// TestActivityRepairReplicaFails: a replica that fails during the repair
// is dropped with the regions dirty, as is every replica not repaired.
func TestActivityRepairReplicaFails(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1", "r2", "r3")
	rng := rand.New(rand.NewPCG(21, 21))
	c.local.setRaw(1*testRegion, randBytes(rng, testRegion)) // region 3 unallocated
	for _, n := range []string{"r1", "r2"} {
		c.nodes[n].copy.setRaw(1*testRegion, randBytes(rng, testRegion))
		c.nodes[n].copy.setRaw(3*testRegion, randBytes(rng, testRegion))
	}
	c.dirty.Mark(testVol, ActivityLog, []uint64{1, 3})
	c.nodes["r2"].copy.setHook(func(off, n int64) error { return errInjected })
	c.onDrop = func(r string) { c.net.Disconnect("p", r) } // no resync to clear what we look at
	c.net.Disconnect("p", "r3")
	cfg := c.config(1)
	cfg.InSync, cfg.OutOfSync = []string{"r1", "r2"}, []string{"r3"}
	c.start(cfg)
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
	if c.dropCount() != 1 || c.drops[0] != "r2" {
		t.Errorf("drops %v, want [r2]", c.drops)
	}
	for _, n := range []string{"r2", "r3"} {
		for _, reg := range []uint64{1, 3} {
			if !c.dirty.has(testVol, n, reg) {
				t.Errorf("%s: region %d not dirty", n, reg)
			}
		}
	}
	if d, _ := c.dirty.Dirty(testVol, ActivityLog); len(d) != 0 {
		t.Errorf("activity log after the repair: %v", d)
	}
}

// TestActivityHotRegionCostsNoMark: writes to a region already in the
// activity log cost no Mark; one to a new region costs one.
func TestActivityHotRegionCostsNoMark(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	m := c.start(c.config(1))
	rng := rand.New(rand.NewPCG(22, 22))
	write := func(region int64) {
		t.Helper()
		off := region*testRegion + rng.Int64N(testRegion/4096)*4096
		if err := m.WriteAt(bg, randBytes(rng, 4096), off, false); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	if n := c.dirty.marksFor(ActivityLog); n != 1 {
		t.Fatalf("%d Marks for the first write", n)
	}
	for range 200 {
		write(0)
	}
	if n := c.dirty.marksFor(ActivityLog); n != 1 {
		t.Errorf("%d Marks after 200 writes to the same region, want 1", n)
	}
	write(1)
	if n := c.dirty.marksFor(ActivityLog); n != 2 {
		t.Errorf("%d Marks after a write to a new region, want 2", n)
	}
}

// TestActivityBounded: random writes and long unmaps over a volume far
// larger than the activity log never grow it past its bound, and none
// fails for it.
func TestActivityBounded(t *testing.T) {
	const size = 16 << 20 // 256 regions
	c := newTestCluster(t, size, "r1", "r2")
	cfg := c.config(1)
	cfg.ActiveRegions = 16
	m := c.start(cfg)
	o := newOrderer(16)
	rng := rand.New(rand.NewPCG(23, 23))
	var failed atomic.Bool
	for range 600 {
		if rng.IntN(20) == 0 {
			off := rng.Int64N(size/(1<<20)) << 20
			o.issue(off, 1<<20, func() { // 16 regions: split
				if err := m.Unmap(bg, off, 1<<20); err != nil {
					failed.Store(true)
				}
			})
			continue
		}
		off := rng.Int64N(size/block.PhysicalBlockSize) * block.PhysicalBlockSize
		p := randBytes(rng, block.PhysicalBlockSize)
		o.issue(off, block.PhysicalBlockSize, func() {
			if err := m.WriteAt(bg, p, off, false); err != nil {
				failed.Store(true)
			}
		})
	}
	o.wait()
	if failed.Load() {
		t.Fatal("an I/O failed")
	}
	if _, peak := m.act.size(); peak > cfg.ActiveRegions || peak == 0 {
		t.Errorf("activity log held up to %d regions, bound %d", peak, cfg.ActiveRegions)
	}
	local := c.local.snapshot()
	assertSame(t, "local vs r1", local, c.nodes["r1"].copy.snapshot())
	assertSame(t, "local vs r2", local, c.nodes["r2"].copy.snapshot())
	if n := c.dirty.marksFor(ActivityLog); n < 20 {
		t.Errorf("only %d Marks: the log cannot have been recycled", n)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if c.dirty.exists(ActivityLog) {
		t.Error("activity log left after Close")
	}
}

// TestActivityIdleRegionsRetired: with more than the low mark in the log,
// idle regions leave it in the background, after a flush of every copy,
// until it is down to the low mark.
func TestActivityIdleRegionsRetired(t *testing.T) {
	c := newTestCluster(t, 2<<20, "r1")
	cfg := c.config(1)
	cfg.ActiveRegions, cfg.ActiveIdle = 64, 5*time.Millisecond // low mark 8
	m := c.start(cfg)
	flushes := c.nodes["r1"].copy.flushes.Load()
	for reg := range int64(20) {
		if err := m.WriteAt(bg, make([]byte, 4096), reg*testRegion, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "idle regions retired", func() bool {
		n, _ := m.act.size()
		d, _ := c.dirty.Dirty(testVol, ActivityLog)
		return n <= 8 && len(d) == n
	})
	if c.nodes["r1"].copy.flushes.Load() == flushes {
		t.Error("regions retired without a flush of the replica")
	}
}

// TestActivityFewRegionsKept: a log at or below the low mark is left
// alone: its regions cost nothing to keep.
func TestActivityFewRegionsKept(t *testing.T) {
	c := newTestCluster(t, 2<<20, "r1")
	cfg := c.config(1)
	cfg.ActiveRegions, cfg.ActiveIdle = 64, 5*time.Millisecond // low mark 8
	m := c.start(cfg)
	for reg := range int64(8) {
		if err := m.WriteAt(bg, make([]byte, 4096), reg*testRegion, false); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * cfg.ActiveIdle)
	if n, _ := m.act.size(); n != 8 {
		t.Errorf("%d regions in the log, want the 8 at the low mark kept", n)
	}
}

// TestActivityNoReplicas: a Mirror without replicas has nothing to keep in
// agreement and costs no Mark; once one is added, writes are logged.
func TestActivityNoReplicas(t *testing.T) {
	c := newTestCluster(t, 1<<20)
	c.addNode("r1")
	cfg := c.config(1)
	cfg.InSync = nil
	m := c.start(cfg)
	for reg := range int64(4) {
		if err := m.WriteAt(bg, make([]byte, 4096), reg*testRegion, false); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.dirty.marksFor(ActivityLog); n != 0 {
		t.Errorf("%d Marks without a replica", n)
	}
	if err := m.AddReplica("r1", true); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteAt(bg, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if !c.dirty.has(testVol, ActivityLog, 0) {
		t.Error("write not in the activity log once a replica exists")
	}
}

// TestCloseDeletesActivityLog: a clean stop leaves nothing to repair.
func TestCloseDeletesActivityLog(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	m := c.start(c.config(1))
	for reg := range int64(5) {
		if err := m.WriteAt(bg, make([]byte, 4096), reg*testRegion, false); err != nil {
			t.Fatal(err)
		}
	}
	if d, _ := c.dirty.Dirty(testVol, ActivityLog); len(d) != 5 {
		t.Fatalf("activity log %v, want 5 regions", d)
	}
	localFlushes := c.local.flushes.Load()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if c.dirty.exists(ActivityLog) {
		t.Error("activity log left after Close")
	}
	if c.local.flushes.Load() == localFlushes {
		t.Error("Close did not flush the local copy")
	}
}

// TestActivityRepairCancelled: a NewMirror whose context ends during the
// repair fails without dropping anyone and leaves the log; the next one
// repairs.
func TestActivityRepairCancelled(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	rng := rand.New(rand.NewPCG(24, 24))
	c.local.setRaw(0, randBytes(rng, 8*testRegion))
	logged := []uint64{0, 1, 2, 3, 4, 5, 6, 7}
	c.dirty.Mark(testVol, ActivityLog, logged)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	var armed atomic.Bool
	armed.Store(true)
	c.nodes["r1"].srv.beforeApply = func(msg Message) {
		if _, ok := msg.(*Write); ok && armed.Load() {
			cancel()
		}
	}
	if _, err := NewMirror(ctx, c.config(1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("NewMirror cancelled during the repair: %v", err)
	}
	if c.dropCount() != 0 {
		t.Errorf("drops %v for a cancelled start", c.drops)
	}
	if d, _ := c.dirty.Dirty(testVol, ActivityLog); !slices.Equal(d, logged) {
		t.Errorf("activity log after a cancelled repair: %v, want %v", d, logged)
	}
	if d, _ := c.dirty.Dirty(testVol, "r1"); len(d) != 0 {
		t.Errorf("r1 dirty after a cancelled repair: %v", d)
	}
	armed.Store(false)
	m := c.start(c.config(1))
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
	if d, _ := c.dirty.Dirty(testVol, ActivityLog); len(d) != 0 {
		t.Errorf("activity log after the repair: %v", d)
	}
	if st := replicaStatus(m, "r1"); st.State != InSync {
		t.Errorf("r1 %v", st.State)
	}
}
