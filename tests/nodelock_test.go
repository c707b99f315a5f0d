package tests

import (
	"context"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/volume/vfs"
)

// Deleting (or reverting) a volume that is merging a snapshot waits for the
// merge, but holds up nothing else: other volumes are created, cloned and
// deleted meanwhile. (Found in review: the node lock was held across the
// wait.)
func TestDeleteDuringMergeHoldsOnlyItsVolume(t *testing.T) {
	n := startInProcess(t, t.TempDir())
	ctx := context.Background()
	if _, err := n.api.CreateVolume(ctx, admin.CreateVolumeRequest{Name: "v", Size: admin.Size{Text: "16MiB"}}); err != nil {
		t.Fatal(err)
	}
	s := n.session("v")
	mustDo(t, s, "write 1 MiB", write10(0, 2048), make([]byte, 1<<20), 0, statusGood)
	s.Close()
	if _, err := n.api.CreateSnapshot(ctx, "v", "s1"); err != nil {
		t.Fatal(err)
	}
	// The merge copies 256 blocks at 20 ms each: about 5 s.
	n.fs.Inject(vfs.Fault{Op: vfs.OpWrite, Path: "/layers/", Delay: 20 * time.Millisecond})
	merged := make(chan error, 1)
	go func() { merged <- n.api.DeleteSnapshot(ctx, "v", "s1") }()
	for n.fs.Hits() == 0 {
		time.Sleep(time.Millisecond)
	}
	deleted := make(chan error, 1)
	go func() { deleted <- n.api.DeleteVolume(ctx, "v") }()
	time.Sleep(200 * time.Millisecond) // DeleteVolume now holds the node lock, waiting for v's slot
	start := time.Now()
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := n.api.CreateVolume(short, admin.CreateVolumeRequest{Name: "x", Size: admin.Size{Text: "16MiB"}})
	waited := time.Since(start)
	select {
	case mErr := <-merged:
		if err != nil || waited > time.Second {
			t.Fatalf("creating an unrelated volume waited %v for another volume's merge (merge %v, create %v)", waited, mErr, err)
		}
	default:
		if err != nil {
			t.Fatalf("creating an unrelated volume waited %v and failed (%v) while another volume merges: the node lock is held by a DeleteVolume waiting for that merge", waited, err)
		}
	}
	<-merged
	<-deleted
}
