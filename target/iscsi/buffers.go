package iscsi

import (
	"math/bits"
	"sync"
)

// bufferPool hands out byte slices in power-of-two size classes so that the
// I/O path does not allocate per command.
type bufferPool struct {
	classes [maxClass - minClass + 1]sync.Pool
}

const (
	minClass = 12 // 4 KiB
	maxClass = 24 // 16 MiB
)

func classOf(n int) int {
	if n <= 1<<minClass {
		return minClass
	}
	return bits.Len(uint(n - 1))
}

// get returns a slice of length n. Slices larger than the biggest class are
// allocated directly and never pooled.
func (p *bufferPool) get(n int) []byte {
	c := classOf(n)
	if c > maxClass {
		return make([]byte, n)
	}
	if v := p.classes[c-minClass].Get(); v != nil {
		return (*v.(*[]byte))[:n]
	}
	return make([]byte, n, 1<<c)
}

// put returns a slice obtained from get.
func (p *bufferPool) put(b []byte) {
	c := cap(b)
	if c < 1<<minClass || c > 1<<maxClass || c&(c-1) != 0 {
		return
	}
	b = b[:0]
	p.classes[bits.Len(uint(c))-1-minClass].Put(&b)
}

// budget bounds the bytes of command buffers the server holds at once, so
// that many initiators asking for huge transfers cannot exhaust memory, and
// each initiator's part of it (all its sessions), so that one host cannot
// take the whole budget and starve the others with TASK SET FULL.
type budget struct {
	mu           sync.Mutex // protects used and every account's buffered
	used         int64
	max          int64
	perInitiator int64
}

// tryAcquire reserves n bytes for an initiator whose holding is *held (its
// account's buffered field, protected by b.mu), and reports whether both
// the initiator's and the server's limits allowed it.
func (b *budget) tryAcquire(held *int64, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max || *held+n > b.perInitiator {
		return false
	}
	b.used += n
	*held += n
	return true
}

func (b *budget) release(held *int64, n int64) {
	b.mu.Lock()
	b.used -= n
	*held -= n
	b.mu.Unlock()
}
