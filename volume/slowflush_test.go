package volume

import (
	"context"
	"testing"
	"time"

	"tandem.io/tandem/volume/vfs"
)

// A snapshot drains its volume's I/O and fdatasyncs the head; a slow disk
// makes that take seconds. Meanwhile other volumes' operations do not wait:
// the store lock is never held across a flush. (Found in review: Get of
// another volume waited 2 s.)
func TestSlowFlushOfOneVolumeBlocksOnlyIt(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewFaulty(vfs.OS{})
	s, err := Open(ctx, Config{Dir: t.TempDir(), FS: fs, Logger: quiet, AllowCrashUnsafe: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Create(ctx, Spec{Name: "v", Size: 8 << 20})
	s.Create(ctx, Spec{Name: "w", Size: 8 << 20})
	info, _ := s.Get("v")
	fs.Inject(vfs.Fault{Op: vfs.OpSync, Path: info.HeadLayer, Delay: 2 * time.Second, Times: 1})
	done := make(chan error, 1)
	go func() { _, err := s.Snapshot(ctx, "v", "s"); done <- err }()
	for fs.Hits() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	if _, err := s.Get("w"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("Get of another volume waited %v for volume v's snapshot flush", d)
	}
	<-done
}
