package layer

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"tandem.io/tandem/volume/vfs"
)

// Two flushes of one head at once (two FUA writes, or a SYNCHRONIZE CACHE
// and a FUA write, from two sessions): the first is slow in fdatasync, the
// second's fails and fails the layer. On Linux a writeback error reaches
// one of two concurrent fdatasyncs only, so the slow one could return 0
// for pages that were dropped. Syncs of a layer run one at a time and
// every one reports a failure of any sync since it was called: no flush is
// reported good after a failed one. (Found in review.)
func TestConcurrentFlushAfterAFailedOne(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewFaulty(vfs.NewMem())
	fs.MkdirAll("/d")
	l, c := faultyHead(t, fs, "/d")
	if err := c.WriteAt(ctx, fill(4096, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	// The first fdatasync is slow; the second fails.
	fs.Inject(vfs.Fault{Op: vfs.OpSync, Delay: 200 * time.Millisecond, Times: 1})
	fs.Inject(vfs.Fault{Op: vfs.OpSync, Err: syscall.EIO, Skip: 1, Times: 1})
	type res struct {
		err error
		at  time.Time
	}
	slow := make(chan res, 1)
	go func() {
		err := c.Flush(ctx)
		slow <- res{err, time.Now()}
	}()
	for fs.Hits() == 0 {
		time.Sleep(time.Millisecond)
	}
	failErr := c.Flush(ctx)
	failedAt := time.Now()
	if failErr == nil {
		t.Fatal("setup: the second flush did not fail")
	}
	r := <-slow
	// The slow sync is delayed 200 ms: a flush that did not wait for it
	// to end (concurrent syncs) would report GOOD about 200 ms after the
	// failure. A few milliseconds are only the goroutine being scheduled
	// late after a GOOD reported before the failing sync started.
	if r.err == nil && r.at.After(failedAt.Add(50*time.Millisecond)) {
		t.Fatalf("a flush was reported GOOD %v after a concurrent flush of the same layer had failed (%v); the layer is failed (%v) but the slow flush never re-checked it",
			r.at.Sub(failedAt), failErr, errors.Unwrap(l.Err()) != nil)
	}
}
