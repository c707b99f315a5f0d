package layer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"tandem.io/tandem/volume/block"
	"tandem.io/tandem/volume/vfs"
)

const testSize = 1 << 20 // 256 blocks

// stack builds layers in dir: each new head sits on the previous one.
type stack struct {
	t   *testing.T
	dir string
	n   int
}

func (s *stack) layer(parent *Layer) *Layer {
	s.t.Helper()
	s.n++
	path := filepath.Join(s.dir, fmt.Sprintf("%d.layer", s.n))
	if err := Create(vfs.OS{}, path, testSize); err != nil {
		s.t.Fatal(err)
	}
	l, err := Open(vfs.OS{}, fmt.Sprint(s.n), path, testSize, parent, true)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { l.Close() })
	return l
}

func fill(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }

func read(t *testing.T, c *Chain, off, n int64) []byte {
	t.Helper()
	p := make([]byte, n)
	if err := c.ReadAt(context.Background(), p, off); err != nil {
		t.Fatal(err)
	}
	return p
}

// The cases the issue names: partial-block writes over a snapshot's block,
// UNMAP over snapshot data (zeros, never the older data), WRITE SAME-like
// runs, and the snapshot itself unchanged by all of it.
func TestChainSemantics(t *testing.T) {
	ctx := context.Background()
	s := &stack{t: t, dir: t.TempDir()}
	base := s.layer(nil)
	c := NewChain(base, testSize)
	c.WriteAt(ctx, fill(64<<10, 'A'), 0, false) // blocks 0-15: A
	snap := base
	c = NewChain(s.layer(snap), testSize) // snapshot: new head on base
	tests := []struct {
		name string
		do   func() error
		off  int64
		want []byte
	}{
		{"1 reads through to the snapshot", func() error { return nil }, 0, fill(4096, 'A')},
		{"2 sector write copies the block up", func() error { return c.WriteAt(ctx, fill(512, 'B'), 512, false) }, 0,
			append(append(fill(512, 'A'), fill(512, 'B')...), fill(3072, 'A')...)},
		{"3 second sector keeps the first", func() error { return c.WriteAt(ctx, fill(512, 'C'), 1024, false) }, 0,
			append(append(append(fill(512, 'A'), fill(512, 'B')...), fill(512, 'C')...), fill(2560, 'A')...)},
		{"4 unmap over snapshot data reads zeros", func() error { return c.Unmap(ctx, 4096, 8192) }, 4096, fill(8192, 0)},
		{"5 partial unmap zeroes only its sectors", func() error { return c.Unmap(ctx, 16384+512, 1024) }, 16384,
			append(append(fill(512, 'A'), fill(1024, 0)...), fill(2560, 'A')...)},
		{"6 unmap where nothing is below punches a hole", func() error { return c.Unmap(ctx, 128<<10, 64<<10) }, 128 << 10, fill(64<<10, 0)},
		{"7 write beyond the snapshot's data", func() error { return c.WriteAt(ctx, fill(8192, 'D'), 200<<10, false) }, 200 << 10, fill(8192, 'D')},
	}
	for _, tc := range tests {
		if err := tc.do(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := read(t, c, tc.off, int64(len(tc.want))); !bytes.Equal(got, tc.want) {
			t.Fatalf("%s: read %q..., want %q...", tc.name, got[:16], tc.want[:16])
		}
	}
	// The snapshot is untouched.
	if got := read(t, NewChain(snap, testSize), 0, 64<<10); !bytes.Equal(got, fill(64<<10, 'A')) {
		t.Fatal("the snapshot changed")
	}
	// The head holds whole blocks only: 0 (copied up), 1-2 (zeros over the
	// snapshot), 4 (partial unmap, copied up), 50-51 (D).
	if n := c.Head().Blocks(); n != 6 {
		t.Fatalf("head holds %d blocks, want 6", n)
	}
}

// After a restart the index is rebuilt from the files' allocation and
// every read is the same.
func TestReopenRebuildsIndex(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := &stack{t: t, dir: dir}
	base := s.layer(nil)
	NewChain(base, testSize).WriteAt(ctx, fill(32<<10, 'x'), 8192, true)
	head := s.layer(base)
	c := NewChain(head, testSize)
	c.WriteAt(ctx, fill(100, 'y'), 9000, true)
	c.Unmap(ctx, 16384, 4096)
	want := read(t, c, 0, testSize)

	b2, err := Open(vfs.OS{}, "1", filepath.Join(dir, "1.layer"), testSize, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	h2, err := Open(vfs.OS{}, "2", filepath.Join(dir, "2.layer"), testSize, b2, true)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if got := read(t, NewChain(h2, testSize), 0, testSize); !bytes.Equal(got, want) {
		t.Fatal("reads differ after reopening the layers")
	}
	if _, err := Open(vfs.OS{}, "x", filepath.Join(dir, "1.layer"), testSize+4096, nil, false); err == nil {
		t.Fatal("a layer file of the wrong size was accepted")
	}
}

// A random mix of writes, unmaps, snapshots and reverts against a model
// that keeps every version's bytes.
func TestChainAgainstModel(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewSource(7))
	s := &stack{t: t, dir: t.TempDir()}
	type snapshot struct {
		l    *Layer
		data []byte
	}
	c := NewChain(s.layer(nil), testSize)
	model := make([]byte, testSize)
	var snaps []snapshot
	for step := 0; step < 400; step++ {
		off := int64(rng.Intn(testSize/512)) * 512
		n := int64(rng.Intn(24)+1) * 512
		n = min(n, testSize-off)
		switch op := rng.Intn(10); {
		case op < 5:
			p := make([]byte, n)
			rng.Read(p)
			if err := c.WriteAt(ctx, p, off, false); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		case op < 7:
			if err := c.Unmap(ctx, off, n); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
		case op < 8:
			snaps = append(snaps, snapshot{c.Head(), append([]byte(nil), model...)})
			c = NewChain(s.layer(c.Head()), testSize)
		case op < 9 && len(snaps) > 0:
			sn := snaps[rng.Intn(len(snaps))]
			c = NewChain(s.layer(sn.l), testSize)
			copy(model, sn.data)
		default:
			if got := read(t, c, off, n); !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("step %d: read %d+%d differs from the model", step, off, n)
			}
		}
	}
	if got := read(t, c, 0, testSize); !bytes.Equal(got, model) {
		t.Fatal("final content differs from the model")
	}
	for i, sn := range snaps {
		if got := read(t, NewChain(sn.l, testSize), 0, testSize); !bytes.Equal(got, sn.data) {
			t.Fatalf("snapshot %d changed", i)
		}
	}
}

// Concurrent partial writes into different sectors of one block held by a
// snapshot: each copy-up must keep the others' sectors.
func TestConcurrentCopyUp(t *testing.T) {
	ctx := context.Background()
	s := &stack{t: t, dir: t.TempDir()}
	base := s.layer(nil)
	NewChain(base, testSize).WriteAt(ctx, fill(testSize, 0xee), 0, false)
	c := NewChain(s.layer(base), testSize)
	var wg sync.WaitGroup
	for blk := 0; blk < 32; blk++ {
		for sec := 0; sec < 8; sec++ {
			wg.Add(1)
			go func(blk, sec int) {
				defer wg.Done()
				c.WriteAt(ctx, fill(512, byte(sec+1)), int64(blk*4096+sec*512), false)
			}(blk, sec)
		}
	}
	wg.Wait()
	for blk := 0; blk < 32; blk++ {
		got := read(t, c, int64(blk*4096), 4096)
		for sec := 0; sec < 8; sec++ {
			if got[sec*512] != byte(sec+1) {
				t.Fatalf("block %d sector %d lost its write", blk, sec)
			}
		}
	}
}

func TestMapping(t *testing.T) {
	ctx := context.Background()
	s := &stack{t: t, dir: t.TempDir()}
	base := s.layer(nil)
	NewChain(base, testSize).WriteAt(ctx, fill(8192, 1), 0, false) // blocks 0-1
	c := NewChain(s.layer(base), testSize)
	c.WriteAt(ctx, fill(4096, 2), 5*4096, false) // block 5
	tests := []struct {
		off    int64
		mapped bool
		n      int64
	}{
		{0, true, 8192},             // from the snapshot
		{2 * 4096, false, 3 * 4096}, // nothing
		{5 * 4096, true, 4096},      // the head
		{6 * 4096, false, testSize - 6*4096},
		{4096 + 512, true, 4096 - 512}, // mid-block: the rest of the run
	}
	for i, tc := range tests {
		m, n, err := c.Mapping(ctx, tc.off)
		if err != nil || m != tc.mapped || n != tc.n {
			t.Errorf("%d: Mapping(%d) = %v %d %v, want %v %d", i+1, tc.off, m, n, err, tc.mapped, tc.n)
		}
	}
}

// sink is a TCP connection whose far end collects everything sent to it;
// collected returns it once the near end is closed.
func sink(t *testing.T) (nc *net.TCPConn, collected func() []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn), func() []byte { c.Close(); return <-got }
}

// faultyHead creates and opens a head layer (no parent) on fs in dir.
func faultyHead(t *testing.T, fs vfs.FS, dir string) (*Layer, *Chain) {
	t.Helper()
	path := filepath.Join(dir, "h.layer")
	if err := Create(fs, path, testSize); err != nil {
		t.Fatal(err)
	}
	l, err := Open(fs, "h", path, testSize, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, NewChain(l, testSize)
}

// SendTo puts on a socket exactly what ReadAt returns: runs from several
// layers and zeros for blocks no layer holds.
func TestSendToMatchesRead(t *testing.T) {
	ctx := context.Background()
	s := &stack{t: t, dir: t.TempDir()}
	base := s.layer(nil)
	NewChain(base, testSize).WriteAt(ctx, fill(100<<10, 'a'), 8192, false)
	c := NewChain(s.layer(base), testSize)
	c.WriteAt(ctx, fill(5000, 'b'), 20000, false)
	c.Unmap(ctx, 40960, 8192)
	nc, collected := sink(t)
	const off, n = 4096 - 512, 256 << 10
	if sent, err := c.SendTo(ctx, nc, off, n); err != nil || sent != n {
		t.Fatal(err)
	}
	if want := read(t, c, off, n); !bytes.Equal(collected(), want) {
		t.Fatal("bytes sent differ from ReadAt")
	}
}

// Issue 8, defect 1: a whole-block write racing a partial write into the
// same block after a snapshot. The partial write copies the block up (reads
// the snapshot's block, merges its sector, writes the block whole); without
// ordering, that copy-up can land after the whole-block write and put the
// snapshot's sectors back over it. Whatever the order, sectors the
// whole-block write covered and the partial one did not must hold the
// whole-block write's data.
func TestWholeBlockWriteRacesCopyUp(t *testing.T) {
	ctx := context.Background()
	s := &stack{t: t, dir: t.TempDir()}
	base := s.layer(nil)
	NewChain(base, testSize).WriteAt(ctx, fill(testSize, 0xee), 0, false) // the snapshot's data
	for round := 0; round < 4; round++ {
		c := NewChain(s.layer(base), testSize)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for blk := 0; blk < testSize/BlockSize; blk++ {
			wg.Add(2)
			go func() {
				defer wg.Done()
				<-start
				c.WriteAt(ctx, fill(512, 0x11), int64(blk*BlockSize), false)
			}()
			go func() {
				defer wg.Done()
				<-start
				c.WriteAt(ctx, fill(BlockSize, 0x22), int64(blk*BlockSize), false)
			}()
		}
		close(start)
		wg.Wait()
		bad := 0
		for blk := 0; blk < testSize/BlockSize; blk++ {
			got := read(t, c, int64(blk*BlockSize), BlockSize)
			if got[0] != 0x11 && got[0] != 0x22 || !bytes.Equal(got[512:], fill(BlockSize-512, 0x22)) {
				bad++
			}
		}
		if bad > 0 {
			t.Fatalf("round %d: %d of %d blocks hold the snapshot's old sectors over a whole-block write", round, bad, testSize/BlockSize)
		}
	}
}

// A failed sync fails the layer for good: no later flush may report the
// data durable (the kernel may have dropped the pages it could not write:
// PostgreSQL's "fsyncgate"), and no read or write goes through it.
func TestFailedSyncFailsTheLayer(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewFaulty(vfs.OS{})
	_, c := faultyHead(t, fs, t.TempDir())
	if err := c.WriteAt(ctx, fill(4096, 1), 0, true); err != nil {
		t.Fatal(err)
	}
	c.WriteAt(ctx, fill(4096, 2), 0, false)
	remove := fs.Inject(vfs.Fault{Op: vfs.OpSync, Err: syscall.EIO, Times: 1})
	if err := c.Flush(ctx); !errors.Is(err, block.ErrMedium) {
		t.Fatalf("flush with the disk failing: %v, want a medium error", err)
	}
	remove()
	for what, err := range map[string]error{
		"flush": c.Flush(ctx),
		"write": c.WriteAt(ctx, fill(512, 3), 8192, false),
		"read":  c.ReadAt(ctx, make([]byte, 4096), 0),
		"fua":   c.WriteAt(ctx, fill(4096, 2), 0, true),
	} {
		if !errors.Is(err, block.ErrMedium) {
			t.Errorf("%s after a failed sync (the disk is fine again): %v, want a medium error", what, err)
		}
	}
	if c.Err() == nil {
		t.Error("the chain does not say it failed")
	}
}

// An aborted write (its task's context is done) stops before its next
// piece; what it did not write keeps its old data.
func TestAbortedWriteStops(t *testing.T) {
	s := &stack{t: t, dir: t.TempDir()}
	c := NewChain(s.layer(nil), testSize)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.WriteAt(ctx, fill(testSize, 9), 0, false); !errors.Is(err, context.Canceled) {
		t.Fatalf("write with its task aborted: %v", err)
	}
	if got := read(t, c, 0, testSize); !bytes.Equal(got, make([]byte, testSize)) {
		t.Fatal("an aborted write reached the layer")
	}
	if err := c.Unmap(ctx, 0, testSize); !errors.Is(err, context.Canceled) {
		t.Fatalf("unmap with its task aborted: %v", err)
	}
}

// A snapshot's file is opened read-only: nothing can write into it by
// mistake.
func TestFrozenLayerRefusesWrites(t *testing.T) {
	ctx := context.Background()
	s := &stack{t: t, dir: t.TempDir()}
	l := s.layer(nil)
	c := NewChain(l, testSize)
	c.WriteAt(ctx, fill(4096, 1), 0, true)
	if err := l.Freeze(); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(ctx, fill(4096, 2), 0, false); !errors.Is(err, block.ErrMedium) {
		t.Fatalf("write into a frozen layer: %v", err)
	}
	if _, err := l.f.WriteAt(fill(4096, 2), 0); err == nil {
		t.Fatal("the frozen layer's file is still open for writing")
	}
	if got := read(t, c, 0, 4096); !bytes.Equal(got, fill(4096, 1)) {
		t.Fatal("a frozen layer changed")
	}
}

// Memory does not grow with the range: UNMAP (or WRITE SAME with UNMAP) of
// 2 GiB on a file system without hole punching writes zeros from one shared
// buffer, and a merge walks the index a run at a time.
func TestBoundedMemory(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewFaulty(vfs.OS{})
	path := filepath.Join(t.TempDir(), "h")
	const size = 2 << 30
	if err := Create(fs, path, size); err != nil {
		t.Fatal(err)
	}
	l, err := Open(fs, "h", path, size, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := NewChain(l, size)
	fs.Inject(vfs.Fault{Op: vfs.OpPunch, Err: vfs.ErrNotSupported})
	// 64 MiB of the 2 GiB are unmapped (zeroed for real on the test's
	// disk): the punch is refused, and the fallback must not allocate a
	// buffer the size of the range.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := c.Unmap(ctx, size-(64<<20), 64<<20); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("unmapping 64 MiB without hole punching allocated %d bytes", grew)
	}
	if got := read(t, c, size-4096, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("the zeroed range does not read as zeros")
	}
	var x index
	for b := uint64(0); b < 1<<20; b += 3 {
		x.set(b)
	}
	n, next := 0, uint64(0)
	allocs := testing.AllocsPerRun(1, func() {
		n, next = 0, 0
		for {
			b, ok := x.next(next)
			if !ok {
				break
			}
			n, next = n+1, b+1
		}
	})
	if allocs != 0 || n != (1<<20+2)/3 {
		t.Fatalf("walking an index of %d blocks: %d blocks, %v allocations", (1<<20+2)/3, n, allocs)
	}
}

// A send reads the layer files it planned without its volume's lock: a
// Freeze (the head became a snapshot) or a Close meanwhile must not close
// a file under it; the last send closes it.
func TestSendPlanKeepsItsFilesOpen(t *testing.T) {
	ctx := context.Background()
	s := &stack{t: t, dir: t.TempDir()}
	l := s.layer(nil)
	c := NewChain(l, testSize)
	c.WriteAt(ctx, fill(64<<10, 'p'), 0, false)
	plan, err := c.PlanSend(0, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Freeze(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	nc, collected := sink(t)
	sent, err := plan.SendTo(ctx, nc)
	plan.Release()
	got := collected()
	if err != nil || sent != 64<<10 {
		t.Fatalf("send after Freeze and Close: %d bytes, %v", sent, err)
	}
	if !bytes.Equal(got, fill(64<<10, 'p')) {
		t.Fatal("the send read the wrong data")
	}
	if _, err := l.pinFile().ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("the layer's file is still open after the last send released it")
	}
}
