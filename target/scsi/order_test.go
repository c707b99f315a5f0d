package scsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"time"

	"tandem.io/tandem/volume/block"
)

// overlapDevice is a memDevice that records whether two writes or unmaps
// touching the same physical block were ever in flight at once: what the
// block.Device contract says the target never does. Each call stays in
// flight a little while so that a missing order shows.
type overlapDevice struct {
	*memDevice
	mu       sync.Mutex    // protects inFlight and overlaps
	inFlight [][2]int64    // physical blocks [start, end) of the calls in flight
	overlaps []string      // what overlapped, for the failure message
	hold     time.Duration // how long a call stays in flight
}

func newOverlapDevice(size int) *overlapDevice {
	return &overlapDevice{memDevice: newMem(size), hold: 200 * time.Microsecond}
}

func (d *overlapDevice) enter(what string, off, n int64) [2]int64 {
	r := [2]int64{off / block.PhysicalBlockSize, (off + n + block.PhysicalBlockSize - 1) / block.PhysicalBlockSize}
	d.mu.Lock()
	for _, o := range d.inFlight {
		if o[0] < r[1] && r[0] < o[1] && len(d.overlaps) < 10 {
			d.overlaps = append(d.overlaps, fmt.Sprintf("%s of blocks [%d,%d) while blocks [%d,%d) were in flight", what, r[0], r[1], o[0], o[1]))
		}
	}
	d.inFlight = append(d.inFlight, r)
	d.mu.Unlock()
	time.Sleep(d.hold)
	return r
}

func (d *overlapDevice) leave(r [2]int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, o := range d.inFlight {
		if o == r {
			d.inFlight = append(d.inFlight[:i], d.inFlight[i+1:]...)
			return
		}
	}
}

func (d *overlapDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	defer d.leave(d.enter("write", off, int64(len(p))))
	return d.memDevice.WriteAt(ctx, p, off, fua)
}

func (d *overlapDevice) Unmap(ctx context.Context, off, n int64) error {
	defer d.leave(d.enter("unmap", off, n))
	return d.memDevice.Unmap(ctx, off, n)
}

func (d *overlapDevice) seen() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.overlaps...)
}

// Every command that changes blocks holds them while it calls the device:
// two commands touching the same 4 KiB block, sent at once from two
// sessions, reach the device one after the other (the block.Device
// contract; a partial write's copy-up in the layers relies on it).
func TestOverlappingWritesAreOrdered(t *testing.T) {
	naa := [16]byte{0x6a, 0x0e}
	write := func(op byte, lba uint64, n uint32) Command {
		var cdb []byte
		switch cdbLength(op) {
		case 6:
			cdb = []byte{op, byte(lba >> 16), byte(lba >> 8), byte(lba), byte(n), 0}
		case 10:
			cdb = cdb10(op, uint32(lba), uint16(n))
		case 12:
			cdb = make([]byte, 12)
			cdb[0] = op
			binary.BigEndian.PutUint32(cdb[2:], uint32(lba))
			binary.BigEndian.PutUint32(cdb[6:], n)
		default:
			cdb = cdb16(op, lba, n)
		}
		return Command{CDB: cdb, DataOut: make([]byte, n*512), ExpectedLength: n * 512}
	}
	writeSame := func(lba uint64, n uint32, unmap bool) Command {
		c := cdb16(opWriteSame16, lba, n)
		if unmap {
			c[1] |= 0x08
		}
		return Command{CDB: c, DataOut: make([]byte, 512), ExpectedLength: 512}
	}
	unmap := func(lba uint64, n uint32) Command {
		p := unmapList(lba, n)
		return Command{CDB: []byte{opUnmap, 0, 0, 0, 0, 0, 0, 0, byte(len(p)), 0}, DataOut: p, ExpectedLength: uint32(len(p))}
	}
	caw := func(lba uint64) Command {
		c := make([]byte, 16)
		c[0], c[13] = opCompareAndWrite, 1
		binary.BigEndian.PutUint64(c[2:], lba)
		return Command{CDB: c, DataOut: make([]byte, 1024), ExpectedLength: 1024} // zeros over zeros: compares equal
	}
	xcopy := func(src, dst uint64, n uint32) Command {
		p := xcopyParams([][16]byte{naa}, [][5]uint64{{0, 0, uint64(n), src, dst}})
		return Command{CDB: xcopyCDB(len(p)), DataOut: p, ExpectedLength: uint32(len(p))}
	}
	tests := []struct {
		name string
		a, b Command
	}{
		{"1 512 B and whole 4 KiB write to one block", write(opWrite10, 0, 1), write(opWrite10, 0, 8)},
		{"2 two sectors of one block", write(opWrite10, 3, 1), write(opWrite16, 7, 1)},
		{"3 WRITE 6 and a write straddling two blocks", write(opWrite6, 8, 1), write(opWrite12, 4, 8)},
		{"4 WRITE AND VERIFY and WRITE", write(opWriteVerify16, 0, 8), write(opWrite10, 5, 1)},
		{"5 WRITE SAME and WRITE", writeSame(0, 64, false), write(opWrite10, 33, 1)},
		{"6 WRITE SAME with UNMAP and WRITE", writeSame(0, 64, true), write(opWrite10, 33, 1)},
		{"7 UNMAP and WRITE", unmap(8, 16), write(opWrite10, 9, 1)},
		{"8 COMPARE AND WRITE and WRITE", caw(2), write(opWrite10, 0, 8)},
		{"9 EXTENDED COPY into the block and WRITE", xcopy(64, 0, 8), write(opWrite10, 1, 1)},
		{"10 EXTENDED COPY and UNMAP", xcopy(64, 8, 8), unmap(15, 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := newOverlapDevice(1 << 20)
			lu, err := NewLogicalUnit(LUConfig{Device: dev, NAA: naa})
			if err != nil {
				t.Fatal(err)
			}
			tg, err := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: lu}})
			if err != nil {
				t.Fatal(err)
			}
			nexusA := Nexus{InitiatorPort: "iqn.a,i,0x1", TargetPort: nexus.TargetPort, RelativePortID: 1, PortGroup: 1}
			nexusB := Nexus{InitiatorPort: "iqn.b,i,0x1", TargetPort: nexus.TargetPort, RelativePortID: 1, PortGroup: 1}
			for _, n := range []Nexus{nexusA, nexusB} {
				tg.Execute(context.Background(), &Command{Nexus: n, CDB: make([]byte, 6)}) // power-on unit attention
			}
			for round := 0; round < 20; round++ {
				var wg sync.WaitGroup
				start := make(chan struct{})
				for _, c := range []struct {
					n   Nexus
					cmd Command
				}{{nexusA, tc.a}, {nexusB, tc.b}} {
					wg.Add(1)
					go func() {
						defer wg.Done()
						cmd := c.cmd
						cmd.Nexus = c.n
						<-start
						r := tg.Execute(context.Background(), &cmd)
						if k, asc := senseOf(r); r.Status != StatusGood && !(k == KeyMiscompare && cmd.CDB[0] == opCompareAndWrite) {
							t.Errorf("%#x: status %#x sense %x/%04x", cmd.CDB[0], r.Status, k, asc)
						}
					}()
				}
				close(start)
				wg.Wait()
			}
			if o := dev.seen(); len(o) > 0 {
				t.Errorf("overlapping device calls in flight at once (%d), e.g.:\n%s", len(o), o[0])
			}
		})
	}
}

// Writes to different 4 KiB blocks do not wait for each other: a write
// the device holds until a write to the next block arrives completes.
func TestWritesToDifferentBlocksRunAtOnce(t *testing.T) {
	dev := &gateDevice{memDevice: newMem(1 << 20), arrived: make(chan struct{})}
	tg := newTarget(t, dev)
	done := make(chan Result, 2)
	go func() {
		done <- tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: cdb10(opWrite10, 0, 8), DataOut: make([]byte, 4096)})
	}()
	go func() {
		done <- tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: cdb10(opWrite10, 8, 8), DataOut: make([]byte, 4096)})
	}()
	for i := 0; i < 2; i++ {
		select {
		case r := <-done:
			if r.Status != StatusGood {
				t.Fatalf("status %#x", r.Status)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a write to another block waited for the first one")
		}
	}
}

// gateDevice holds the first write until a second one arrives.
type gateDevice struct {
	*memDevice
	once    sync.Once
	arrived chan struct{}
	mu      sync.Mutex // protects calls
	calls   int
}

func (d *gateDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.mu.Lock()
	d.calls++
	first := d.calls == 1
	d.mu.Unlock()
	if first {
		select {
		case <-d.arrived:
		case <-time.After(10 * time.Second):
		}
	} else {
		d.once.Do(func() { close(d.arrived) })
	}
	return d.memDevice.WriteAt(ctx, p, off, fua)
}

// COMPARE AND WRITE is atomic against a write to its block: when both
// return GOOD, the compare and write happened before the write (which
// then wins), never around it.
func TestCompareAndWriteAtomicAgainstWrites(t *testing.T) {
	dev := newOverlapDevice(1 << 20)
	tg := newTarget(t, dev)
	ctx := context.Background()
	fill := func(b byte) []byte {
		p := make([]byte, 512)
		for i := range p {
			p[i] = b
		}
		return p
	}
	for round := 0; round < 50; round++ {
		if r := tg.Execute(ctx, &Command{Nexus: nexus, CDB: cdb10(opWrite10, 0, 1), DataOut: fill('x')}); r.Status != StatusGood {
			t.Fatal("setup write failed")
		}
		c := make([]byte, 16)
		c[0], c[13] = opCompareAndWrite, 1
		var cawRes, wRes Result
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			cawRes = tg.Execute(ctx, &Command{Nexus: nexus, CDB: c, DataOut: append(fill('x'), fill('y')...), ExpectedLength: 1024})
		}()
		go func() {
			defer wg.Done()
			wRes = tg.Execute(ctx, &Command{Nexus: nexus, CDB: cdb10(opWrite10, 0, 1), DataOut: fill('z')})
		}()
		wg.Wait()
		got := dev.data[0]
		if cawRes.Status == StatusGood && wRes.Status == StatusGood && got != 'z' {
			t.Fatalf("round %d: COMPARE AND WRITE and WRITE both GOOD, block holds %q: the write fell between the compare and the write", round, got)
		}
	}
}

// queued is the number of claims in l's queue, granted or waiting.
func queued(l *rangeLock) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for c := l.head; c != nil; c = c.next {
		n++
	}
	return n
}

// lockAsync claims [off, off+n) in a goroutine; the channel gets the claim
// once granted. It returns after the claim is queued.
func lockAsync(t *testing.T, ctx context.Context, l *rangeLock, off, n int64) chan *claim {
	t.Helper()
	before := queued(l)
	ch := make(chan *claim, 1)
	go func() {
		c, err := l.lock(ctx, off, n)
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	for deadline := time.Now().Add(5 * time.Second); queued(l) == before; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("claim never queued")
		}
	}
	return ch
}

func granted(ch chan *claim) (*claim, bool) {
	select {
	case c, ok := <-ch:
		return c, ok
	case <-time.After(20 * time.Millisecond):
		return nil, false
	}
}

func mustGrant(t *testing.T, what string, ch chan *claim) *claim {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatalf("%s: gave up", what)
		}
		return c
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not granted", what)
	}
	return nil
}

// Overlapping claims are granted in arrival order, so a large write is not
// starved by small ones; claims that overlap nothing queued never wait.
func TestRangeLockFIFO(t *testing.T) {
	var l rangeLock
	ctx := context.Background()
	const k = 4096
	a, err := l.lock(ctx, 0, 2*k) // blocks 0-1
	if err != nil {
		t.Fatal(err)
	}
	big := lockAsync(t, ctx, &l, 0, 256*k)         // blocks 0-255: waits for a
	small := lockAsync(t, ctx, &l, 100*k+512, 512) // block 100: free, but after big
	other := lockAsync(t, ctx, &l, 300*k, k)       // block 300: overlaps nothing
	l.unlock(mustGrant(t, "a claim overlapping nothing", other))
	if _, ok := granted(big); ok {
		t.Fatal("the large claim was granted while an earlier overlapping one was held")
	}
	if _, ok := granted(small); ok {
		t.Fatal("a small claim overtook an earlier, waiting, overlapping large one")
	}
	l.unlock(a)
	b := mustGrant(t, "the large claim after the first was released", big)
	if _, ok := granted(small); ok {
		t.Fatal("the small claim was granted while the large one was held")
	}
	l.unlock(b)
	l.unlock(mustGrant(t, "the small claim after the large one", small))

	// Sectors of one physical block are one block: 512 B at 0 and 512 B
	// at 3584 conflict.
	a, _ = l.lock(ctx, 0, 512)
	sector7 := lockAsync(t, ctx, &l, 3584, 512)
	if _, ok := granted(sector7); ok {
		t.Fatal("two sectors of one physical block were held at once")
	}
	l.unlock(a)
	l.unlock(mustGrant(t, "the second sector", sector7))
	if n := queued(&l); n != 0 {
		t.Fatalf("%d claims left queued", n)
	}
}

// A waiting claim whose context ends leaves the queue, and the claims
// behind it that only waited for it go ahead.
func TestRangeLockCancel(t *testing.T) {
	var l rangeLock
	a, _ := l.lock(context.Background(), 0, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := lockAsync(t, ctx, &l, 0, 8192)                     // waits for a
	behind := lockAsync(t, context.Background(), &l, 4096, 4096) // waits for gaveUp only
	cancel()
	select {
	case _, ok := <-gaveUp:
		if ok {
			t.Fatal("a cancelled claim was granted while the block was held")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled claim kept waiting")
	}
	c := mustGrant(t, "the claim behind a cancelled one", behind)
	l.unlock(c)
	l.unlock(a)
	if n := queued(&l); n != 0 {
		t.Fatalf("%d claims left queued", n)
	}
	if _, err := l.lock(ctx, 0, 4096); err != nil {
		// Not waiting: a free range is granted even with ctx done.
		t.Fatalf("uncontended claim with a done context: %v", err)
	}
}

// Many goroutines claiming random ranges: no physical block is ever held
// twice, and every claim is granted.
func TestRangeLockExclusion(t *testing.T) {
	var l rangeLock
	var owners [64]int32 // holders per physical block
	var mu sync.Mutex    // protects owners
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				off := int64((g*131+i*61)%(64*8)) * 512
				n := int64(1+(g*7+i*13)%40) * 512
				n = min(n, 64*4096-off)
				c, err := l.lock(context.Background(), off, n)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for b := off / 4096; b < (off+n+4095)/4096; b++ {
					if owners[b]++; owners[b] > 1 {
						t.Errorf("block %d held twice", b)
					}
				}
				mu.Unlock()
				time.Sleep(time.Duration(i%3) * time.Microsecond)
				mu.Lock()
				for b := off / 4096; b < (off+n+4095)/4096; b++ {
					owners[b]--
				}
				mu.Unlock()
				l.unlock(c)
			}
		}()
	}
	wg.Wait()
	if n := queued(&l); n != 0 {
		t.Fatalf("%d claims left queued", n)
	}
}

// Claiming and releasing allocates nothing once claims are reused.
func TestRangeLockAllocs(t *testing.T) {
	var l rangeLock
	ctx := context.Background()
	c, _ := l.lock(ctx, 0, 4096)
	l.unlock(c)
	if n := testing.AllocsPerRun(1000, func() {
		c, _ := l.lock(ctx, 8192, 4096)
		l.unlock(c)
	}); n != 0 {
		t.Fatalf("%v allocations per claim", n)
	}
}
