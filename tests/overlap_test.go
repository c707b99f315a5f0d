package tests

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"tandem.io/tandem/target/iscsi/initiator"
)

// Issue 8, defect 1, through real sessions: on a volume with a snapshot,
// many pairs of a 512-byte write and a whole-4-KiB write to the same block
// race from different sessions. Whatever order they land in, the sectors
// only the whole-block write covered (1 to 7) must hold its data; before
// the target ordered overlapping writes, the partial write's copy-up could
// put the snapshot's old sectors back over it.
func TestOverlappingWritesAfterSnapshot(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "race", "--size", "64MiB")
	const (
		blocks = 10240 // 4 KiB blocks raced per round: 40 MiB
		pairs  = 16    // pairs of sessions racing at once
		rounds = 3     // each round after a new snapshot
		chunk  = 64    // 4 KiB blocks per setup write and read back (256 KiB)
	)
	ss := make([]*initiator.Session, 2*pairs)
	for i := range ss {
		ss[i] = n.session(t, "race", fmt.Sprintf("iqn.2026-11.test:racer-%d", i), byte(i+1))
		defer ss[i].Close()
	}
	fill := func(b byte, size int) []byte { return bytes.Repeat([]byte{b}, size) }
	for round := 1; round <= rounds; round++ {
		// The snapshot's data, old = 0x50+round, then the snapshot: the
		// head holds none of the blocks, so a partial write copies up.
		old := byte(0x50 + round)
		for b := 0; b < blocks; b += chunk {
			mustDo(t, ss[0], "setup write", write10(uint32(b*8), chunk*8), fill(old, chunk*4096), 0, statusGood)
		}
		n.mustCLI("snapshot", "create", "race", fmt.Sprintf("s%d", round))

		partial, whole := fill(0xa0+byte(round), 512), fill(0xb0+byte(round), 4096)
		var wg sync.WaitGroup
		errs := make(chan error, 2*pairs)
		for p := 0; p < pairs; p++ {
			meet, stop := make(chan struct{}), make(chan struct{})
			var once sync.Once
			for side, s := range []*initiator.Session{ss[2*p], ss[2*p+1]} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for b := p; b < blocks; b += pairs {
						// Meet the other side, then both write block b.
						send, recv := meet, (chan struct{})(nil)
						if side == 1 {
							send, recv = nil, meet
						}
						select {
						case send <- struct{}{}:
						case <-recv:
						case <-stop:
							return
						}
						cdb, data := write10(uint32(b*8), 1), partial
						if side == 1 {
							cdb, data = write10(uint32(b*8), 8), whole
						}
						r, err := s.Do(cdb, data, 0)
						if err == nil && r.Status != statusGood {
							k, a := r.SenseKey()
							err = fmt.Errorf("status %#x sense %x/%04x", r.Status, k, a)
						}
						if err != nil {
							errs <- fmt.Errorf("write to block %d: %w", b, err)
							once.Do(func() { close(stop) }) // the other side stops too
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}

		var lost []string
		for b := 0; b < blocks; b += chunk {
			r := mustDo(t, ss[0], "read back", read10(uint32(b*8), chunk*8), nil, chunk*4096, statusGood)
			for i := 0; i < chunk; i++ {
				blk := r.Data[i*4096 : (i+1)*4096]
				if s0 := blk[0]; s0 != partial[0] && s0 != whole[0] {
					lost = append(lost, fmt.Sprintf("block %d sector 0 holds %#x", b+i, s0))
				}
				if !bytes.Equal(blk[512:], whole[512:]) {
					lost = append(lost, fmt.Sprintf("block %d sectors 1-7 hold %#x (snapshot data %#x, whole-block write %#x)", b+i, blk[512], old, whole[512]))
				}
			}
		}
		if len(lost) > 0 {
			t.Fatalf("round %d: %d of %d blocks lost the whole-block write, e.g.\n%s", round, len(lost), blocks, lost[0])
		}
	}
}
