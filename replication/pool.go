package replication

import (
	"math/bits"
	"sync"
)

// bufferPool pools buffers for request bodies and resync regions by
// power-of-two size class from 4 KiB up to a maximal write with its
// volume ID, so that a replica does not allocate per write. The zero value
// is ready to use.
type bufferPool struct {
	classes [maxPoolShift - minPoolShift + 1]sync.Pool
}

const (
	minPoolShift = 12
	maxPoolShift = 26 // 64 MiB
)

func poolClass(n int) int {
	if n <= 1<<minPoolShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minPoolShift
}

// get returns a buffer of length n.
func (p *bufferPool) get(n int) []byte {
	c := poolClass(n)
	if c >= len(p.classes) {
		return make([]byte, n)
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 1<<(c+minPoolShift))
}

// put returns b to the pool; b must not be used afterwards.
func (p *bufferPool) put(b []byte) {
	c := poolClass(cap(b))
	if c >= len(p.classes) || cap(b) != 1<<(c+minPoolShift) {
		return
	}
	b = b[:cap(b)]
	p.classes[c].Put(&b)
}
