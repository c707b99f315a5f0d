package tests

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/initiator"
)

// Kill -9 at random moments while snapshots are taken, merged (deleted),
// cloned and reverted, with flushed writes going on and one of them in
// flight at each kill: after each restart the catalog is consistent (every
// volume served, every snapshot listed readable), every flushed write is
// there, and the region of the write in flight holds its old or new data.
func TestCrashDuringLayerOperations(t *testing.T) {
	requireTool(t, "qemu-io")
	kills := 50
	if testing.Short() {
		kills = 10
	}
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "live", "--size", "64MiB")
	n.mustCLI("volume", "create", "rev", "--size", "64MiB")
	const regions = 8 // 1 MiB each, at region*4 MiB
	// model[r] is the pattern region r must hold; maybe[r] another it may
	// hold instead (a write in flight at the kill).
	var mu sync.Mutex
	model := make([]int, regions)
	maybe := make([]int, regions)
	for i := range maybe {
		maybe[i] = -1
	}
	rng := rand.New(rand.NewSource(int64(time.Now().Nanosecond())))
	qio := func(vol string, cmds ...string) (string, error) {
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		return run(t, 30*time.Second, "qemu-io", append(args, n.url(vol))...)
	}
	// verify reads every region through a session: each sector holds the
	// region's flushed pattern, or (a write in flight at the kill, which
	// may be partly on disk) the pattern that write carried. It counts
	// the regions where some of the write in flight did reach the disk.
	landed := 0
	verify := func(round int) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		sess := n.session(t, "live", "iqn.2026-11.test:verify", 9)
		defer sess.Close()
		for r := 0; r < regions; r++ {
			lba := uint32(r << 22 / 512)
			cdb := []byte{0x28, 0, byte(lba >> 24), byte(lba >> 16), byte(lba >> 8), byte(lba), 0, 0x08, 0x00, 0} // 2048 blocks
			res := mustDo(t, sess, "read region", cdb, nil, 1<<20, statusGood)
			newData := false
			for sec := 0; sec < 2048; sec++ {
				b := res.Data[sec*512 : (sec+1)*512]
				if (int(b[0]) != model[r] && int(b[0]) != maybe[r]) || !bytes.Equal(b, bytes.Repeat(b[:1], 512)) {
					t.Fatalf("round %d: region %d sector %d holds %d (first byte), want the flushed pattern %d (or %d, in flight) throughout", round, r, sec, b[0], model[r], maybe[r])
				}
				newData = newData || int(b[0]) != model[r]
			}
			if newData {
				landed++
			}
			if maybe[r] >= 0 {
				// Possibly a mix of both: write it afresh so that the
				// model is one pattern again.
				p := 1 + (model[r]+maybe[r])%250
				if out, err := qio("live", fmt.Sprintf("write -P %d %d 1M", p, r<<22), "flush"); err != nil {
					t.Fatalf("round %d: rewriting region %d: %v\n%s", round, r, err, out)
				}
				model[r], maybe[r] = p, -1
			}
		}
	}
	var acked, opsDone [5]int // writes acknowledged; operations completed by kind
	var countMu sync.Mutex
	var cut [2]int // kills that interrupted a WRITE, a SYNCHRONIZE CACHE
	for round := 0; round < kills; round++ {
		stop := make(chan struct{})
		// What the writer is doing, for the kill to wait on: writes flushed
		// this round, and 1 while a WRITE or 2 while its SYNCHRONIZE CACHE
		// is outstanding (0: none). interrupted is the phase in which the
		// node's death ended it; badStatus a write or flush the node failed.
		var flushedNow, phase atomic.Int32
		interrupted, badStatus := 0, ""
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // flushed writes to "live", through a session that fails when the node dies
			defer wg.Done()
			// Not n.session: t.Fatal may not be called from this goroutine,
			// and the node may die before the login.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			w, err := initiator.Dial(ctx, initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:live",
				Name: "iqn.2026-11.test:writer", ISID: [6]byte{0x80, 0, 0, 0, 0, 7}})
			if err != nil {
				return
			}
			defer w.Close()
			for i := 0; i < 5; i++ { // unit attentions of a new nexus
				if r, err := w.Do(make([]byte, 6), nil, 0); err != nil || r.Status == statusGood {
					break
				}
			}
			rng := rand.New(rand.NewSource(int64(round)))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r, p := rng.Intn(regions), 1+rng.Intn(250)
				mu.Lock()
				maybe[r] = p
				mu.Unlock()
				lba := uint32(r << 22 / 512)
				phase.Store(1)
				res, err := w.Do([]byte{0x2a, 0, byte(lba >> 24), byte(lba >> 16), byte(lba >> 8), byte(lba), 0, 0x08, 0, 0},
					bytes.Repeat([]byte{byte(p)}, 1<<20), 0)
				if err == nil && res.Status == statusGood {
					phase.Store(2)
					res, err = w.Do([]byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0) // SYNCHRONIZE CACHE
				}
				if err != nil {
					interrupted = int(phase.Load())
					return // the node died under it
				}
				if res.Status != statusGood {
					k, asc := res.SenseKey()
					badStatus = fmt.Sprintf("status %#x, sense %x/%04x", res.Status, k, asc)
					return
				}
				mu.Lock()
				model[r], maybe[r] = p, -1
				acked[0]++
				mu.Unlock()
				phase.Store(0)
				flushedNow.Add(1)
			}
		}()
		wg.Add(1)
		go func() { // layer operations on both volumes
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("r%d-%d", round, i)
				var err error
				switch i % 5 {
				case 0:
					_, err = n.cli("snapshot", "create", "live", name)
				case 1:
					_, err = n.cli("volume", "clone", "live", "c-"+name)
				case 2:
					_, err = n.cli("snapshot", "create", "rev", name)
				case 3:
					_, err = n.cli("volume", "revert", "rev", fmt.Sprintf("r%d-%d", round, i-1), "--force")
				case 4: // merge: delete the snapshot taken four steps ago
					_, err = n.cli("snapshot", "delete", "live", fmt.Sprintf("r%d-%d", round, i-4))
				}
				if err != nil {
					return
				}
				countMu.Lock()
				opsDone[i%5]++
				countMu.Unlock()
			}
		}()
		// The kill: with the writer logged in and writing (a write flushed
		// this round), at a random moment among the layer operations, and
		// with a write of the writer's outstanding.
		waitUntil := func(what string, ok func() bool) {
			t.Helper()
			for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(100 * time.Microsecond) {
				if time.Now().After(deadline) {
					t.Fatalf("round %d: %s within 20 s", round, what)
				}
			}
		}
		waitUntil("no write flushed", func() bool { return flushedNow.Load() > 0 })
		time.Sleep(time.Duration(rng.Intn(400)) * time.Millisecond)
		waitUntil("no write outstanding", func() bool { return phase.Load() != 0 })
		n.kill()
		close(stop)
		wg.Wait()
		if badStatus != "" {
			t.Fatalf("round %d: a flushed write to live failed before the kill: %s", round, badStatus)
		}
		if interrupted == 0 {
			t.Fatalf("round %d: the kill interrupted none of the writer's writes", round)
		}
		cut[interrupted-1]++
		n.start()
		verify(round)
		// Catalog consistent: every volume served, every snapshot of
		// "live" deletable (merge), clones readable and then deleted.
		var vols []map[string]any
		for _, name := range strings.Fields(n.mustCLI("volume", "list")) {
			if strings.HasPrefix(name, "c-") {
				if _, err := qio(name, "read 0 1M"); err != nil {
					t.Fatalf("round %d: clone %s unreadable: %v", round, name, err)
				}
				n.mustCLI("volume", "delete", name)
			}
		}
		for _, v := range []string{"live", "rev"} {
			j := n.volumeJSON(v)
			if e, _ := j["error"].(string); e != "" {
				t.Fatalf("round %d: volume %s unavailable after restart: %s", round, v, e)
			}
			vols = append(vols, j)
		}
		for _, s := range vols[0]["snapshots"].([]any) {
			n.mustCLI("snapshot", "delete", "live", s.(map[string]any)["name"].(string))
		}
		verify(round)
		if strings.Contains(n.log.String(), "panic") {
			t.Fatalf("round %d: node log mentions a panic:\n%s", round, tail(n.log.String(), 30))
		}
	}
	t.Logf("%d kills, each with a write in flight (%d during its WRITE, %d during its SYNCHRONIZE CACHE; %d left some of its data on disk); %d flushed writes acknowledged and verified; completed between kills: %d snapshots, %d clones, %d snapshots of the revert volume, %d reverts, %d merges (snapshot deletes)",
		kills, cut[0], cut[1], landed, acked[0], opsDone[0], opsDone[1], opsDone[2], opsDone[3], opsDone[4])
}
