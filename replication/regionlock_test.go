package replication

import (
	"sync"
	"testing"
	"time"
)

func TestRegionLocks(t *testing.T) {
	var l regionLocks
	u1 := l.lock(span{0, 3}, false)
	u2 := l.lock(span{2, 5}, false) // shared: no conflict
	got := make(chan string, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		u := l.lock(span{3, 3}, true)
		got <- "exclusive"
		u()
	}()
	// Once the exclusive request is pending, a new shared one overlapping
	// it queues behind it.
	for {
		l.mu.Lock()
		n := len(l.pending)
		l.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	go func() {
		defer wg.Done()
		u := l.lock(span{3, 4}, false)
		got <- "shared"
		u()
	}()
	u3 := l.lock(span{10, 10}, false) // elsewhere: no wait
	u3()
	time.Sleep(10 * time.Millisecond) // let the shared request arrive first
	u1()
	u2()
	wg.Wait()
	if a, b := <-got, <-got; a != "exclusive" || b != "shared" {
		t.Errorf("order %s, %s: the pending exclusive lock was overtaken", a, b)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.held) != 0 || len(l.pending) != 0 {
		t.Errorf("left held %v pending %v", l.held, l.pending)
	}
}
