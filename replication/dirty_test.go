package replication

import (
	"slices"
	"sync"
	"testing"
)

func TestBitset(t *testing.T) {
	var b bitset
	for _, i := range []uint64{3, 64, 65, 700} {
		if !b.set(i) {
			t.Errorf("set(%d) of a new member", i)
		}
	}
	if b.set(64) || b.n != 4 {
		t.Errorf("set of a member: n=%d", b.n)
	}
	if got := b.members(); !slices.Equal(got, []uint64{3, 64, 65, 700}) {
		t.Errorf("members %v", got)
	}
	for _, c := range []struct{ from, want uint64 }{{0, 3}, {4, 64}, {66, 700}} {
		if got, ok := b.next(c.from); !ok || got != c.want {
			t.Errorf("next(%d) = %d %v, want %d", c.from, got, ok, c.want)
		}
	}
	if _, ok := b.next(701); ok {
		t.Error("next past the last member")
	}
	if !b.del(65) || b.del(65) || b.has(65) || b.n != 3 {
		t.Error("del")
	}
}

func TestSpanSetCompacts(t *testing.T) {
	var ss spanSet
	for i := range 10000 {
		ss.add(span{uint64(i % 100), uint64(i % 100)})
	}
	ss.compact()
	if len(ss.s) != 1 || ss.s[0] != (span{0, 99}) {
		t.Errorf("compacted to %v", ss.s)
	}
	if len(ss.s) > 256 {
		t.Errorf("%d spans kept", len(ss.s))
	}
}

func TestSpanOf(t *testing.T) {
	for _, c := range []struct {
		off, n int64
		want   span
	}{{0, 1, span{0, 0}}, {0, 1 << 20, span{0, 0}}, {1<<20 - 512, 1024, span{0, 1}}, {3 << 20, 2 << 20, span{3, 4}}} {
		if got := spanOf(c.off, c.n, 1<<20); got != c.want {
			t.Errorf("spanOf(%d, %d) = %v, want %v", c.off, c.n, got, c.want)
		}
	}
}

func TestDirtyMapMarkOnlyNew(t *testing.T) {
	log := newMemDirtyLog()
	d := newDirtyMap(log, "v", "r")
	if err := d.mark(span{1, 3}); err != nil {
		t.Fatal(err)
	}
	if err := d.mark(span{2, 3}); err != nil {
		t.Fatal(err)
	}
	if log.marks != 1 {
		t.Errorf("%d Mark calls; regions already dirty must cost none", log.marks)
	}
	if got, _ := log.Dirty("v", "r"); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("persisted %v", got)
	}
}

func TestDirtyMapGroupCommit(t *testing.T) {
	log := newMemDirtyLog()
	d := newDirtyMap(log, "v", "r")
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.mark(span{uint64(i), uint64(i)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got, _ := log.Dirty("v", "r"); len(got) != 64 {
		t.Errorf("%d regions persisted", len(got))
	}
	if log.concurrent {
		t.Error("concurrent DirtyLog calls for one replica")
	}
	if n, _ := d.counts(); n != 64 {
		t.Errorf("%d dirty in memory", n)
	}
}

func TestDirtyMapMarkFailure(t *testing.T) {
	log := newMemDirtyLog()
	d := newDirtyMap(log, "v", "r")
	log.setFail(errInjected)
	if err := d.mark(span{5, 5}); err == nil {
		t.Fatal("mark succeeded with a failing log")
	}
	if d.isDirty(5) {
		t.Error("a region whose mark failed is dirty in memory")
	}
	log.setFail(nil)
	if err := d.mark(span{5, 5}); err != nil || !log.has("v", "r", 5) {
		t.Errorf("mark retried: %v", err)
	}
}

// TestDirtyMapCopiedThenMarked: a region copied, then marked again before
// its Clear, stays dirty in the log.
func TestDirtyMapCopiedThenMarked(t *testing.T) {
	log := newMemDirtyLog()
	d := newDirtyMap(log, "v", "r")
	d.mark(span{0, 1})
	d.setCopied(0)
	d.setCopied(1)
	if err := d.mark(span{1, 1}); err != nil {
		t.Fatal(err)
	}
	if log.marks != 1 {
		t.Errorf("re-marking a copied region still in the log cost a Mark")
	}
	if err := d.clearCopied(); err != nil {
		t.Fatal(err)
	}
	if log.has("v", "r", 0) || !log.has("v", "r", 1) {
		t.Errorf("after clear: region 0 in log %v (want false), region 1 %v (want true)",
			log.has("v", "r", 0), log.has("v", "r", 1))
	}
	if dirty, copied := d.counts(); dirty != 1 || copied != 0 {
		t.Errorf("dirty %d copied %d", dirty, copied)
	}
}

func TestDirtyMapMarkBig(t *testing.T) {
	log := newMemDirtyLog()
	d := newDirtyMap(log, "v", "r")
	if err := d.mark(span{0, 3 * markChunk}); err != nil {
		t.Fatal(err)
	}
	if n, _ := d.counts(); n != 3*markChunk+1 {
		t.Errorf("%d dirty", n)
	}
	if got, _ := log.Dirty("v", "r"); len(got) != 3*markChunk+1 {
		t.Errorf("%d persisted", len(got))
	}
	if log.marks != 4 {
		t.Errorf("%d Mark calls for %d regions in chunks of %d", log.marks, 3*markChunk+1, markChunk)
	}
}

func TestDirtyMapLoad(t *testing.T) {
	log := newMemDirtyLog()
	log.Mark("v", "r", []uint64{4, 9})
	d := newDirtyMap(log, "v", "r")
	if err := d.load(); err != nil {
		t.Fatal(err)
	}
	if r, ok := d.nextDirty(0); !ok || r != 4 {
		t.Errorf("first dirty %d %v", r, ok)
	}
	if r, ok := d.nextDirty(5); !ok || r != 9 {
		t.Errorf("next dirty %d %v", r, ok)
	}
	if !d.allDirty(span{4, 4}) || d.allDirty(span{4, 5}) {
		t.Error("allDirty")
	}
}
