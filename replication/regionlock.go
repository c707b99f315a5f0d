package replication

import "sync"

// regionLocks are shared/exclusive locks on runs of regions. Live writes
// take their regions shared; the resync copier and verify take them
// exclusively while they read a region locally and send it (or compare
// it), so that no live write lands in between. Each holder takes one run
// at once and waits for nothing else while holding it, so there is no
// deadlock. A waiting exclusive request holds back new shared ones that
// overlap it, so a steady stream of writes cannot starve the copier.
//
// The Mirror takes these locks only while a resync or verify runs; the
// write path costs nothing otherwise.
type regionLocks struct {
	mu      sync.Mutex // protects the fields below
	held    []regionHold
	pending []span // exclusive requests waiting
	wake    chan struct{}
}

type regionHold struct {
	span
	exclusive bool
}

func (s span) overlaps(o span) bool { return s.first <= o.last && o.first <= s.last }

// lock takes sp shared or exclusive and returns the unlock function.
func (l *regionLocks) lock(sp span, exclusive bool) func() {
	l.mu.Lock()
	queued := false
	for {
		if !l.conflicts(sp, exclusive) {
			break
		}
		if exclusive && !queued {
			l.pending = append(l.pending, sp)
			queued = true
		}
		if l.wake == nil {
			l.wake = make(chan struct{})
		}
		w := l.wake
		l.mu.Unlock()
		<-w
		l.mu.Lock()
	}
	if queued {
		for i, p := range l.pending {
			if p == sp {
				l.pending = append(l.pending[:i], l.pending[i+1:]...)
				break
			}
		}
	}
	h := regionHold{sp, exclusive}
	l.held = append(l.held, h)
	l.mu.Unlock()
	return func() { l.unlock(h) }
}

func (l *regionLocks) conflicts(sp span, exclusive bool) bool {
	for _, h := range l.held {
		if h.overlaps(sp) && (exclusive || h.exclusive) {
			return true
		}
	}
	if !exclusive {
		for _, p := range l.pending {
			if p.overlaps(sp) {
				return true
			}
		}
	}
	return false
}

func (l *regionLocks) unlock(h regionHold) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, x := range l.held {
		if x == h {
			l.held = append(l.held[:i], l.held[i+1:]...)
			break
		}
	}
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
}
