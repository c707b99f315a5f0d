package volume

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tandem.io/tandem/volume/catalog"
)

func pattern(v byte) []byte { return bytes.Repeat([]byte{v}, 64<<10) }

func writeP(t *testing.T, s *Store, vol string, v byte) {
	t.Helper()
	dev, err := s.Device(vol)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.WriteAt(context.Background(), pattern(v), 1<<20, true); err != nil {
		t.Fatal(err)
	}
}

func readsP(t *testing.T, s *Store, vol string, v byte) {
	t.Helper()
	dev, err := s.Device(vol)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64<<10)
	if err := dev.ReadAt(context.Background(), got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pattern(v)) {
		t.Fatalf("volume %s reads %q..., want %q", vol, got[:4], []byte{v})
	}
}

// The scenario at the store level, then again after a restart:
// A, s1, B, s2, C; clones of s1 and s2; revert; delete s1 after its clone.
func TestSnapshotsRevertClones(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	if _, err := s.Create(ctx, Spec{Name: "prod", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	writeP(t, s, "prod", 'A')
	if _, err := s.Snapshot(ctx, "prod", "s1"); err != nil {
		t.Fatal(err)
	}
	writeP(t, s, "prod", 'B')
	if _, err := s.Snapshot(ctx, "prod", "s2"); err != nil {
		t.Fatal(err)
	}
	writeP(t, s, "prod", 'C')
	if _, err := s.Snapshot(ctx, "prod", "s1"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate snapshot name: %v", err)
	}
	if _, err := s.Clone(ctx, "prod", "s1", Spec{Name: "lab1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Clone(ctx, "prod", "s2", Spec{Name: "lab2"}); err != nil {
		t.Fatal(err)
	}
	readsP(t, s, "lab1", 'A')
	readsP(t, s, "lab2", 'B')
	readsP(t, s, "prod", 'C')
	writeP(t, s, "lab1", 'L') // writes to a clone stay in the clone
	readsP(t, s, "lab2", 'B')
	readsP(t, s, "prod", 'C')

	s.Close()
	s = open(t, dir)
	defer s.Close()
	readsP(t, s, "lab1", 'L')
	readsP(t, s, "lab2", 'B')
	readsP(t, s, "prod", 'C')

	if err := s.Revert(ctx, "prod", "s1", nil); err != nil {
		t.Fatal(err)
	}
	readsP(t, s, "prod", 'A')
	if err := s.DeleteSnapshot(ctx, "prod", "s1"); !errors.Is(err, ErrInUse) {
		t.Fatalf("deleting a snapshot with a clone: %v", err)
	}
	if err := s.Delete(ctx, "lab1", nil); err != nil {
		t.Fatal(err)
	}
	// s1 has two children now: s2 (which hides all of s1's data) and the
	// head reverted onto it (which shows it through). Deleting s1 moves its
	// data into the head: the volume keeps reading A, s2 keeps B.
	if err := s.DeleteSnapshot(ctx, "prod", "s1"); err != nil {
		t.Fatal(err)
	}
	readsP(t, s, "prod", 'A')
	readsP(t, s, "lab2", 'B')
	if i, _ := s.Get("prod"); len(i.Snapshots) != 1 || i.Snapshots[0].Name != "s2" {
		t.Fatalf("snapshots after deleting s1: %+v", i.Snapshots)
	}
	// s2 still works as a snapshot: revert to it.
	if err := s.Revert(ctx, "prod", "s2", nil); err != nil {
		t.Fatal(err)
	}
	readsP(t, s, "prod", 'B')
	// A snapshot whose data its child hides entirely gives all of it back.
	writeP(t, s, "prod", 'D')
	if _, err := s.Snapshot(ctx, "prod", "s3"); err != nil {
		t.Fatal(err)
	}
	writeP(t, s, "prod", 'E')
	before, _ := s.Get("prod")
	if err := s.DeleteSnapshot(ctx, "prod", "s3"); err != nil {
		t.Fatal(err)
	}
	after, _ := s.Get("prod")
	if before.AllocatedBytes-after.AllocatedBytes < 64<<10 {
		t.Fatalf("allocated bytes %d -> %d: deleting a hidden snapshot gave nothing back", before.AllocatedBytes, after.AllocatedBytes)
	}
	readsP(t, s, "prod", 'E')

	// Grow, never shrink.
	if _, err := s.Resize(ctx, "prod", 8<<20); !errors.Is(err, ErrShrink) {
		t.Fatalf("shrink: %v", err)
	}
	if i, err := s.Resize(ctx, "prod", 32<<20); err != nil || i.Size != 32<<20 {
		t.Fatalf("grow: %v %d", err, i.Size)
	}
	dev, _ := s.Device("prod")
	if err := dev.WriteAt(ctx, pattern('G'), 30<<20, true); err != nil {
		t.Fatalf("write in the grown part: %v", err)
	}
	readsP(t, s, "prod", 'E')
}

// A volume written before layers existed (a record without a head layer,
// data in volumes/<id>/head.layer) opens with its data and can be
// snapshotted.
func TestLegacyVolumeMigrates(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	info, _ := s.Create(ctx, Spec{Name: "old", Size: 4 << 20})
	writeP(t, s, "old", 'O')
	s.Close()
	// Rewrite it the old way: data file in volumes/<id>/, no head.
	os.MkdirAll(filepath.Join(dir, "volumes", info.ID), 0o700)
	if err := os.Rename(filepath.Join(dir, "layers", info.HeadLayer+".layer"), filepath.Join(dir, "volumes", info.ID, "head.layer")); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	rec := s.vols["old"].rec
	rec.Head = ""
	s.cat.Apply(catalogChanges(rec, info.HeadLayer))
	s.Close()

	s = open(t, dir)
	defer s.Close()
	readsP(t, s, "old", 'O')
	if _, err := s.Snapshot(ctx, "old", "first"); err != nil {
		t.Fatal(err)
	}
	writeP(t, s, "old", 'N')
	if _, err := s.Clone(ctx, "old", "first", Spec{Name: "copy"}); err != nil {
		t.Fatal(err)
	}
	readsP(t, s, "copy", 'O')
}

func catalogChanges(rec catalogVolume, dropLayer string) catalogChangesT {
	return catalogChangesT{PutVolumes: []catalogVolume{rec}, DeleteLayers: []string{dropLayer}}
}

type (
	catalogVolume   = catalog.Volume
	catalogChangesT = catalog.Changes
)

// A snapshot taken while writes are in flight is a point in time: every
// write acknowledged before it started is in it, and none started after it
// returned.
func TestSnapshotIsAPointInTime(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	defer s.Close()
	s.Create(ctx, Spec{Name: "v", Size: 16 << 20})
	dev, _ := s.Device("v")
	const writers = 8
	var acked, started [writers]atomic.Int64 // last acknowledged / last started sequence
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := make([]byte, 4096)
			for seq := int64(1); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				started[w].Store(seq)
				binary.BigEndian.PutUint64(buf, uint64(seq))
				if err := dev.WriteAt(ctx, buf, int64(w)*4096, false); err != nil {
					t.Error(err)
					return
				}
				acked[w].Store(seq)
			}
		}(w)
	}
	for round := 0; round < 20; round++ {
		time.Sleep(2 * time.Millisecond)
		var before, after [writers]int64
		for w := range before {
			before[w] = acked[w].Load()
		}
		name := fmt.Sprintf("p%d", round)
		if _, err := s.Snapshot(ctx, "v", name); err != nil {
			t.Fatal(err)
		}
		for w := range after {
			after[w] = started[w].Load()
		}
		if _, err := s.Clone(ctx, "v", name, Spec{Name: "c" + name}); err != nil {
			t.Fatal(err)
		}
		cl, _ := s.Device("c" + name)
		buf := make([]byte, 4096)
		for w := 0; w < writers; w++ {
			cl.ReadAt(ctx, buf, int64(w)*4096)
			got := int64(binary.BigEndian.Uint64(buf))
			if got < before[w] || got > after[w] {
				t.Fatalf("round %d writer %d: snapshot holds write %d, want one in [%d, %d]", round, w, got, before[w], after[w])
			}
		}
	}
	close(stop)
	wg.Wait()
}
