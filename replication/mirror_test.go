package replication

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tandem.io/tandem/volume/block"
)

var bg = context.Background()

func randBytes(rng *rand.Rand, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

func TestMirrorCopiesIdentical(t *testing.T) {
	const size = 4 << 20
	c := newTestCluster(t, size, "r1", "r2")
	m := c.start(c.config(1))

	// Concurrent writes, each writer in its own area.
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			base := int64(1<<20 + w*(384<<10))
			for range 40 {
				n := int64(1+rng.IntN(64)) * block.LogicalBlockSize
				off := base + rng.Int64N((384<<10-n)/block.LogicalBlockSize)*block.LogicalBlockSize
				if err := m.WriteAt(bg, randBytes(rng, int(n)), off, rng.IntN(4) == 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// Overlapping writes and unmaps in the first MiB, ordered as the
	// target orders them, against a model.
	model := make([]byte, 1<<20)
	o := newOrderer(16)
	rng := rand.New(rand.NewPCG(99, 2))
	var failed atomic.Bool
	for range 400 {
		if rng.IntN(8) == 0 {
			off := rng.Int64N(250) * block.PhysicalBlockSize
			n := int64(1+rng.IntN(6)) * block.PhysicalBlockSize
			clear(model[off : off+n])
			o.issue(off, n, func() {
				if err := m.Unmap(bg, off, n); err != nil {
					failed.Store(true)
				}
			})
			continue
		}
		n := int64(1+rng.IntN(32)) * block.LogicalBlockSize
		off := rng.Int64N((1<<20-n)/block.LogicalBlockSize) * block.LogicalBlockSize
		p := randBytes(rng, int(n))
		copy(model[off:], p)
		o.issue(off, n, func() {
			if err := m.WriteAt(bg, p, off, false); err != nil {
				failed.Store(true)
			}
		})
	}
	o.wait()
	wg.Wait()
	if failed.Load() {
		t.Fatal("an ordered I/O failed")
	}
	local := c.local.snapshot()
	assertSame(t, "local vs model", local[:1<<20], model)
	for _, n := range []string{"r1", "r2"} {
		assertSame(t, "local vs "+n, local, c.nodes[n].copy.snapshot())
	}
	if c.dropCount() != 0 {
		t.Errorf("%d drops in a healthy cluster", c.dropCount())
	}
}

func TestFUAAndFlushReachEveryCopy(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1", "r2")
	m := c.start(c.config(1))
	for i := range 5 {
		if err := m.WriteAt(bg, make([]byte, 4096), int64(i)*4096, true); err != nil {
			t.Fatal(err)
		}
		if err := m.WriteAt(bg, make([]byte, 4096), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if err := m.Flush(bg); err != nil {
			t.Fatal(err)
		}
	}
	for name, cp := range map[string]*memCopy{"local": c.local, "r1": c.nodes["r1"].copy, "r2": c.nodes["r2"].copy} {
		if got := cp.fuaWrites.Load(); got != 5 {
			t.Errorf("%s: %d FUA writes, want 5", name, got)
		}
		if got := cp.flushes.Load(); got != 3 {
			t.Errorf("%s: %d flushes, want 3", name, got)
		}
	}
}

// TestReplicaKilledMidLoad cuts a replica off while writes run: they go
// on after Drop, and when the replica is back only the regions it missed
// are copied before it rejoins with an identical copy.
func TestReplicaKilledMidLoad(t *testing.T) {
	const size = 16 << 20
	c := newTestCluster(t, size, "r1")
	m := c.start(c.config(1))

	var stop atomic.Bool
	var confined atomic.Bool // after the drop, writes stay in the first MiB
	var wrote atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for !stop.Load() {
				span := int64(size)
				if confined.Load() {
					span = 1 << 20
				}
				// Worker w owns the 4 KiB blocks numbered w mod 8.
				blk := rng.Int64N(span/block.PhysicalBlockSize/8)*8 + int64(w)
				if err := m.WriteAt(bg, randBytes(rng, block.PhysicalBlockSize), blk*block.PhysicalBlockSize, false); err != nil {
					errs <- err
					return
				}
				wrote.Add(1)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if err := m.Flush(bg); err != nil {
				errs <- err
				return
			}
		}
	}()
	waitFor(t, "some writes", func() bool { return wrote.Load() > 300 })
	c.net.Disconnect("p", "r1")
	waitFor(t, "the drop", func() bool { return c.dropCount() == 1 })
	confined.Store(true)
	after := wrote.Load()
	waitFor(t, "writes after the drop", func() bool { return wrote.Load() > after+300 })
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("I/O failed: %v", err)
	}
	if st := replicaStatus(m, "r1"); st.State != OutOfSync {
		t.Fatalf("r1 %v after the drop", st.State)
	}

	c.net.Reconnect("p", "r1")
	m.Kick("r1")
	waitFor(t, "r1 back in sync", inSync(m, "r1"))
	st := replicaStatus(m, "r1")
	if st.BytesCopied == 0 || st.BytesCopied > size/4 {
		t.Errorf("resync copied %d bytes of %d: want only the dirty regions", st.BytesCopied, size)
	}
	if c.rejoinCount() != 1 {
		t.Errorf("%d rejoins", c.rejoinCount())
	}
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
	if d, _ := c.dirty.Dirty(testVol, "r1"); len(d) != 0 {
		t.Errorf("dirty regions left after the rejoin: %v", d)
	}
	// Writes go to it again.
	if err := m.WriteAt(bg, bytes.Repeat([]byte("after the rejoin"), 32), 0, false); err != nil {
		t.Fatal(err)
	}
	assertSame(t, "local vs r1 after a write", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
}

// TestDirtyPersistedBeforeDrop: writes a replica never answers are in the
// DirtyLog when Drop is called, and complete once it returned.
func TestDirtyPersistedBeforeDrop(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1", "r2")
	release := make(chan struct{})
	c.nodes["r1"].copy.setHook(func(off, n int64) error {
		<-release
		return nil
	})
	t.Cleanup(func() { close(release) })
	cfg := c.config(1)
	cfg.ReplicaTimeout = 200 * time.Millisecond
	m := c.start(cfg)
	offs := []int64{0, 3 << 16, 7 << 16, 15 << 16} // regions 0, 3, 7, 15
	var atDrop []bool
	c.onDrop = func(replica string) {
		for _, off := range offs {
			atDrop = append(atDrop, c.dirty.has(testVol, "r1", uint64(off>>16)))
		}
	}
	var wg sync.WaitGroup
	for _, off := range offs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.WriteAt(bg, bytes.Repeat([]byte{1}, 4096), off, false); err != nil {
				t.Errorf("write at %d: %v", off, err)
			}
		}()
	}
	wg.Wait()
	if c.dropCount() != 1 || c.drops[0] != "r1" {
		t.Fatalf("drops %v, want [r1]", c.drops)
	}
	for i, ok := range atDrop {
		if !ok {
			t.Errorf("region of the write at %d not dirty when Drop was called", offs[i])
		}
	}
	if st := replicaStatus(m, "r2"); st.State != InSync {
		t.Errorf("r2 %v", st.State)
	}
	assertSame(t, "local vs r2", c.local.snapshot(), c.nodes["r2"].copy.snapshot())
}

// TestDropFailingFailsWrites: while Drop cannot commit, writes fail (never
// a false success); once it can, they succeed again.
func TestDropFailingFailsWrites(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	m := c.start(c.config(1))
	if err := m.WriteAt(bg, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	c.setDropErr(errInjected)
	c.net.Disconnect("p", "r1")
	for i := range 3 {
		err := m.WriteAt(bg, bytes.Repeat([]byte{2}, 4096), int64(i)*4096, false)
		if !errors.Is(err, block.ErrMedium) {
			t.Fatalf("write %d while Drop fails: %v, want a medium error", i, err)
		}
	}
	if err := m.Flush(bg); !errors.Is(err, block.ErrMedium) {
		t.Fatalf("flush while Drop fails: %v", err)
	}
	if n := c.dropCount(); n < 2 {
		t.Errorf("Drop tried %d times", n)
	}
	c.setDropErr(nil)
	if err := m.WriteAt(bg, bytes.Repeat([]byte{3}, 4096), 0, false); err != nil {
		t.Fatalf("write once Drop works: %v", err)
	}
	if st := replicaStatus(m, "r1"); st.State != OutOfSync {
		t.Errorf("r1 %v", st.State)
	}
	for r := uint64(0); r < 1; r++ {
		if !c.dirty.has(testVol, "r1", r) {
			t.Errorf("region %d not dirty", r)
		}
	}
}

// TestDeposed: once a replica accepted a newer epoch from another primary,
// the old primary's write fails with ErrDeposed and never lands there,
// every later I/O fails, and no replica is dropped for it.
func TestDeposed(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	old := c.start(c.config(1))
	if err := old.WriteAt(bg, bytes.Repeat([]byte{1}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	cfg := c.config(2)
	cfg.Local = newMemCopy(1 << 20)
	cfg.Self = "p2"
	cfg.Dialer = c.net.Dialer("p2")
	c.start(cfg)

	err := old.WriteAt(bg, bytes.Repeat([]byte{2}, 4096), 4096, false)
	if !errors.Is(err, ErrDeposed) || !errors.Is(err, block.ErrClosed) {
		t.Fatalf("write of the deposed primary: %v", err)
	}
	got := make([]byte, 4096)
	c.nodes["r1"].copy.ReadAt(bg, got, 4096)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Error("the deposed primary's write landed on the replica")
	}
	if err := old.ReadAt(bg, got, 0); !errors.Is(err, ErrDeposed) {
		t.Errorf("read of the deposed primary: %v", err)
	}
	if err := old.Flush(bg); !errors.Is(err, ErrDeposed) {
		t.Errorf("flush of the deposed primary: %v", err)
	}
	if c.dropCount() != 0 {
		t.Errorf("a replica was dropped for a stale epoch: %v", c.drops)
	}
	// Nor can it come back at its old epoch.
	if _, err := NewMirror(bg, c.config(1)); !errors.Is(err, ErrDeposed) {
		t.Errorf("NewMirror at a stale epoch: %v", err)
	}
}

// TestUnreachableAtStart: an in-sync replica that cannot be reached when
// the Mirror starts is dropped, and resynced once it is back.
func TestUnreachableAtStart(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	c.net.Disconnect("p", "r1")
	m := c.start(c.config(1))
	if err := m.WriteAt(bg, bytes.Repeat([]byte{5}, 8192), 65536, false); err != nil {
		t.Fatal(err)
	}
	if c.dropCount() != 1 {
		t.Fatalf("drops %v", c.drops)
	}
	c.net.Reconnect("p", "r1")
	m.Kick("r1")
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	if st := replicaStatus(m, "r1"); st.RegionsCopied != 1 {
		t.Errorf("copied %d regions, want 1", st.RegionsCopied)
	}
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
}

// TestFullRebuild: a replica with no valid dirty map gets every region:
// data where the local copy is allocated, an unmap where it is not.
func TestFullRebuild(t *testing.T) {
	const size = 1 << 20
	c := newTestCluster(t, size, "r1")
	rng := rand.New(rand.NewPCG(3, 3))
	// Junk on the replica everywhere; data locally in regions 0, 1 and
	// part of 5.
	c.nodes["r1"].copy.setRaw(0, randBytes(rng, size))
	c.local.setRaw(0, randBytes(rng, 128<<10))
	c.local.setRaw(5<<16+4096, randBytes(rng, 8192))
	cfg := c.config(1)
	cfg.InSync, cfg.FullRebuild = nil, []string{"r1"}
	m := c.start(cfg)
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
	st := replicaStatus(m, "r1")
	if want := int64(128<<10 + 8192); st.BytesCopied != want {
		t.Errorf("copied %d bytes, want the %d allocated", st.BytesCopied, want)
	}
	if st.RegionsToCopy != size/(64<<10) || st.RegionsCopied != st.RegionsToCopy {
		t.Errorf("progress %d of %d regions", st.RegionsCopied, st.RegionsToCopy)
	}
	mapped, n, _ := c.nodes["r1"].copy.Mapping(bg, 2<<16)
	if mapped || n < 3<<16 {
		t.Errorf("replica's regions 2..4 mapped=%v for %d bytes: thin copy not kept thin", mapped, n)
	}
}

// TestLiveWritesDuringResync: writes keep going to regions being copied
// (ordered as the target orders them); the copies end identical.
func TestLiveWritesDuringResync(t *testing.T) {
	const size = 1 << 20
	c := newTestCluster(t, size, "r1")
	rng := rand.New(rand.NewPCG(4, 4))
	c.local.setRaw(0, randBytes(rng, size))
	// Slow the replica so that the copy of each region takes a while.
	c.nodes["r1"].copy.setHook(func(off, n int64) error {
		time.Sleep(200 * time.Microsecond)
		return nil
	})
	cfg := c.config(1)
	cfg.InSync, cfg.FullRebuild = nil, []string{"r1"}
	m := c.start(cfg)
	o := newOrderer(8)
	var failed atomic.Bool
	for i := 0; i < 2000 && (i < 300 || !inSync(m, "r1")()); i++ {
		n := int64(1+rng.IntN(16)) * block.LogicalBlockSize
		off := rng.Int64N((size-n)/block.LogicalBlockSize) * block.LogicalBlockSize
		p := randBytes(rng, int(n))
		o.issue(off, n, func() {
			if err := m.WriteAt(bg, p, off, false); err != nil {
				failed.Store(true)
			}
		})
	}
	o.wait()
	if failed.Load() {
		t.Fatal("a write failed")
	}
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
}

// TestBarrierOrder: a write completed before the barrier is in the
// replica's copy when the operation is applied there; one issued while
// the barrier runs waits and is not. An out-of-sync replica is marked for
// a full rebuild.
func TestBarrierOrder(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1", "r2")
	cfg := c.config(1)
	cfg.InSync, cfg.OutOfSync = []string{"r1"}, []string{"r2"}
	c.net.Disconnect("p", "r2")
	m := c.start(cfg)
	before := bytes.Repeat([]byte{0xbb}, 4096)
	after := bytes.Repeat([]byte{0xaa}, 4096)
	if err := m.WriteAt(bg, before, 0, false); err != nil {
		t.Fatal(err)
	}
	localRan := make(chan struct{})
	proceed := make(chan struct{})
	barrierDone := make(chan error, 1)
	go func() {
		barrierDone <- m.Barrier(bg, []byte("snapshot s1"), func() error {
			close(localRan)
			<-proceed
			return nil
		})
	}()
	<-localRan
	writeDone := make(chan error, 1)
	go func() { writeDone <- m.WriteAt(bg, after, 4096, false) }()
	time.Sleep(20 * time.Millisecond) // give the write the chance to overtake the barrier
	close(proceed)
	if err := <-barrierDone; err != nil {
		t.Fatal(err)
	}
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
	recs := c.nodes["r1"].copies.records()
	if len(recs) != 1 || recs[0].op != "snapshot s1" {
		t.Fatalf("barriers applied on r1: %v", recs)
	}
	if !bytes.Equal(recs[0].data[:4096], before) {
		t.Error("the write before the barrier was not in r1's copy when it applied the barrier")
	}
	if !bytes.Equal(recs[0].data[4096:8192], make([]byte, 4096)) {
		t.Error("the write after the barrier was in r1's copy when it applied the barrier")
	}
	for r := uint64(0); r < 16; r++ {
		if !c.dirty.has(testVol, "r2", r) {
			t.Errorf("out-of-sync r2: region %d not marked for the rebuild", r)
		}
	}
	if err := m.Barrier(bg, []byte("x"), func() error { return errInjected }); !errors.Is(err, errInjected) {
		t.Errorf("barrier whose local part fails: %v", err)
	}
	if n := len(c.nodes["r1"].copies.records()); n != 1 {
		t.Errorf("a barrier whose local part failed was sent (%d applied)", n)
	}
}

func TestVerify(t *testing.T) {
	c := newTestCluster(t, 2<<20, "r1", "r2")
	m := c.start(c.config(1))
	rng := rand.New(rand.NewPCG(5, 5))
	if err := m.WriteAt(bg, randBytes(rng, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	diffs, err := m.Verify(bg)
	if err != nil || len(diffs) != 0 {
		t.Fatalf("verify of identical copies: %v, %v", diffs, err)
	}
	c.nodes["r2"].copy.setRaw(1<<20+5<<16+100, []byte("bit rot"))
	diffs, err = m.Verify(bg)
	if err != nil {
		t.Fatal(err)
	}
	want := []Difference{{Replica: "r2", Offset: 1<<20 + 5<<16, Length: 64 << 10}}
	if len(diffs) != 1 || diffs[0] != want[0] {
		t.Errorf("differences %v, want %v", diffs, want)
	}
}

// TestVerifyDuringWrites: writes running while verify compares do not show
// as differences.
func TestVerifyDuringWrites(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	m := c.start(c.config(1))
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for !stop.Load() {
				blk := rng.Int64N(256/4)*4 + int64(w)
				if err := m.WriteAt(bg, randBytes(rng, 4096), blk*4096, false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 5 {
		diffs, err := m.Verify(bg)
		if err != nil || len(diffs) != 0 {
			t.Errorf("verify while writing: %v, %v", diffs, err)
		}
	}
	stop.Store(true)
	wg.Wait()
}

func TestCloseFailsIO(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	m := c.start(c.config(1))
	if err := m.WriteAt(bg, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if err := m.WriteAt(bg, make([]byte, 4096), 0, false); !errors.Is(err, block.ErrClosed) {
		t.Errorf("write after close: %v", err)
	}
	if d, _ := c.dirty.Dirty(testVol, "r1"); len(d) != 0 {
		t.Errorf("a clean close left dirty regions %v", d)
	}
	m.Close()
}

// TestReplicaPowerLoss: writes a replica acknowledged but had not flushed
// when it lost power are resynced too.
func TestReplicaPowerLoss(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	r1 := c.nodes["r1"].copy
	r1.trackDurable()
	m := c.start(c.config(1))
	if err := m.WriteAt(bg, bytes.Repeat([]byte{1}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(bg); err != nil {
		t.Fatal(err)
	}
	// Acknowledged, not flushed: lost with the replica's power.
	if err := m.WriteAt(bg, bytes.Repeat([]byte{2}, 4096), 5<<16, false); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteAt(bg, bytes.Repeat([]byte{3}, 4096), 9<<16, true); err != nil {
		t.Fatal(err)
	}
	c.net.Disconnect("p", "r1")
	r1.powerLoss()
	if err := m.WriteAt(bg, bytes.Repeat([]byte{4}, 4096), 4096, false); err != nil {
		t.Fatal(err)
	}
	c.net.Reconnect("p", "r1")
	m.Kick("r1")
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	assertSame(t, "local vs r1", c.local.snapshot(), r1.snapshot())
	if st := replicaStatus(m, "r1"); st.RegionsCopied != 2 {
		t.Errorf("copied %d regions, want 2 (the unflushed write's and the one written while out)", st.RegionsCopied)
	}
}

// TestRejoinRetried: a failed Rejoin is retried; meanwhile the replica is
// treated as in sync (it may be, if the commit happened).
func TestRejoinRetried(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	var tries atomic.Int32
	c.onRejoin = func(string) error {
		if tries.Add(1) < 3 {
			return errInjected
		}
		return nil
	}
	c.net.Disconnect("p", "r1")
	m := c.start(c.config(1))
	if err := m.WriteAt(bg, bytes.Repeat([]byte{1}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	c.net.Reconnect("p", "r1")
	m.Kick("r1")
	waitFor(t, "a rejoin attempt", func() bool { return tries.Load() >= 1 })
	// Rejoining: writes reach the replica.
	if err := m.WriteAt(bg, bytes.Repeat([]byte{2}, 4096), 8192, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	if tries.Load() != 3 {
		t.Errorf("%d rejoin attempts", tries.Load())
	}
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
}

// TestBarrierFailsOnReplica: a replica that cannot apply a barrier is
// dropped with its whole copy dirty; the barrier succeeds.
func TestBarrierFailsOnReplica(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1", "r2")
	c.nodes["r2"].copies.barrier = func(*memCopy, []byte) error { return errInjected }
	// Keep it away afterwards, so that no resync clears what we look at.
	c.onDrop = func(r string) { c.net.Disconnect("p", r) }
	m := c.start(c.config(1))
	if err := m.Barrier(bg, []byte("snapshot"), func() error { return nil }); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	if c.dropCount() != 1 || c.drops[0] != "r2" {
		t.Fatalf("drops %v, want [r2]", c.drops)
	}
	for r := uint64(0); r < 16; r++ {
		if !c.dirty.has(testVol, "r2", r) {
			t.Errorf("region %d of r2 not dirty after a failed barrier", r)
		}
	}
	if n := len(c.nodes["r1"].copies.records()); n != 1 {
		t.Errorf("r1 applied %d barriers", n)
	}
}

// TestResyncInterrupted: a replica failing during its resync keeps what
// is left dirty and finishes on the next attempt.
func TestResyncInterrupted(t *testing.T) {
	const size = 2 << 20
	c := newTestCluster(t, size, "r1")
	rng := rand.New(rand.NewPCG(6, 6))
	c.local.setRaw(0, randBytes(rng, size))
	var copied atomic.Int32
	c.nodes["r1"].copy.setHook(func(off, n int64) error {
		if copied.Add(1) == 10 {
			c.net.Disconnect("p", "r1")
		}
		return nil
	})
	cfg := c.config(1)
	cfg.InSync, cfg.FullRebuild = nil, []string{"r1"}
	m := c.start(cfg)
	waitFor(t, "the resync cut off", func() bool { return copied.Load() >= 10 && replicaStatus(m, "r1").State == OutOfSync })
	if d, _ := c.dirty.Dirty(testVol, "r1"); len(d) == 0 {
		t.Fatal("nothing left dirty after an interrupted resync")
	}
	c.net.Reconnect("p", "r1")
	m.Kick("r1")
	waitFor(t, "r1 in sync", inSync(m, "r1"))
	assertSame(t, "local vs r1", c.local.snapshot(), c.nodes["r1"].copy.snapshot())
}

func TestSendToFallback(t *testing.T) {
	c := newTestCluster(t, 1<<20)
	m := c.start(c.config(1)) // no replica: a Mirror of one copy
	want := bytes.Repeat([]byte("sendto"), 1000)
	if err := m.WriteAt(bg, want, 4096, false); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan []byte, 1)
	go func() {
		s, err := l.Accept()
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(s)
		got <- b
	}()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.SendTo(bg, conn.(*net.TCPConn), 4096, int64(len(want)))
	conn.Close()
	if err != nil || n != int64(len(want)) {
		t.Fatalf("SendTo: %d, %v", n, err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Errorf("sent %d bytes, not the data", len(b))
	}
	if err := m.WriteAt(bg, want, 1<<20-100, false); !errors.Is(err, block.ErrOutOfRange) {
		t.Errorf("write past the end: %v", err)
	}
}

// TestDropRetryBacksOff: a Drop that keeps failing is retried after a
// backoff, not back to back (a bound far above the two or three attempts
// the backoff allows in the time, far below a retry loop's thousands).
func TestDropRetryBacksOff(t *testing.T) {
	c := newTestCluster(t, 1<<20, "r1")
	m := c.start(c.config(1))
	c.setDropErr(errInjected)
	c.net.Disconnect("p", "r1")
	if err := m.WriteAt(bg, make([]byte, 4096), 0, false); !errors.Is(err, block.ErrMedium) {
		t.Fatalf("write while Drop fails: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := c.dropCount(); n > 20 {
		t.Errorf("Drop called %d times in 300ms", n)
	}
}

// TestBarrierTimeout: a barrier is held to BarrierTimeout, not to
// ReplicaTimeout: a replica slow to apply it is dropped only past the
// former.
func TestBarrierTimeout(t *testing.T) {
	for _, tc := range []struct {
		name           string
		barrierTimeout time.Duration
		wantDrop       bool
	}{
		{"slower than ReplicaTimeout, within BarrierTimeout", 30 * time.Second, false},
		{"past BarrierTimeout", 200 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, 1<<20, "r1")
			release := make(chan struct{})
			var once sync.Once
			t.Cleanup(func() { once.Do(func() { close(release) }) })
			const slow = 800 * time.Millisecond // four replica timeouts
			c.nodes["r1"].copies.barrier = func(*memCopy, []byte) error {
				select {
				case <-time.After(slow):
				case <-release:
				}
				return nil
			}
			c.onDrop = func(r string) { c.net.Disconnect("p", r) } // no resync to look at
			cfg := c.config(1)
			cfg.ReplicaTimeout, cfg.BarrierTimeout = 200*time.Millisecond, tc.barrierTimeout
			m := c.start(cfg)
			if err := m.Barrier(bg, []byte("snapshot"), func() error { return nil }); err != nil {
				t.Fatalf("barrier: %v", err)
			}
			if got := c.dropCount() == 1; got != tc.wantDrop {
				t.Errorf("dropped %v, want %v (drops %v)", got, tc.wantDrop, c.drops)
			}
			if !tc.wantDrop {
				if st := replicaStatus(m, "r1"); st.State != InSync {
					t.Errorf("r1 %v", st.State)
				}
				if n := len(c.nodes["r1"].copies.records()); n != 1 {
					t.Errorf("r1 applied %d barriers", n)
				}
			} else if !c.dirty.has(testVol, "r1", 0) {
				t.Error("a replica dropped for a barrier is not marked for a full rebuild")
			}
		})
	}
}
