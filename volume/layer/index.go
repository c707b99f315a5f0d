package layer

import (
	"math/bits"
	"slices"
)

// index is a sparse bitmap of block numbers: chunks of 32768 blocks
// (128 MiB of data) are allocated when a block in them is first set, so a
// thin 1 TiB volume with little data costs little memory.
type index struct {
	chunks map[uint64]*[chunkWords]uint64
}

const (
	chunkBits  = 1 << 15
	chunkWords = chunkBits / 64
)

func (x *index) get(b uint64) bool {
	c := x.chunks[b/chunkBits]
	if c == nil {
		return false
	}
	i := b % chunkBits
	return c[i/64]&(1<<(i%64)) != 0
}

func (x *index) set(b uint64) {
	if x.chunks == nil {
		x.chunks = make(map[uint64]*[chunkWords]uint64)
	}
	c := x.chunks[b/chunkBits]
	if c == nil {
		c = new([chunkWords]uint64)
		x.chunks[b/chunkBits] = c
	}
	i := b % chunkBits
	c[i/64] |= 1 << (i % 64)
}

func (x *index) clear(b uint64) {
	c := x.chunks[b/chunkBits]
	if c == nil {
		return
	}
	i := b % chunkBits
	c[i/64] &^= 1 << (i % 64)
}

func (x *index) count() int {
	n := 0
	for _, c := range x.chunks {
		for _, w := range c {
			n += bits.OnesCount64(w)
		}
	}
	return n
}

// blocks lists the set blocks in order.
func (x *index) blocks() []uint64 {
	keys := make([]uint64, 0, len(x.chunks))
	for k := range x.chunks {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []uint64
	for _, k := range keys {
		c := x.chunks[k]
		for w, word := range c {
			for word != 0 {
				i := bits.TrailingZeros64(word)
				out = append(out, k*chunkBits+uint64(w*64+i))
				word &^= 1 << i
			}
		}
	}
	return out
}
