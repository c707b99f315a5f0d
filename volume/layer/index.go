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
	keys   []uint64 // the chunk numbers in chunks, in order
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
		i, _ := slices.BinarySearch(x.keys, b/chunkBits)
		x.keys = slices.Insert(x.keys, i, b/chunkBits)
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

// next returns the first set block at or after b, without allocating.
func (x *index) next(b uint64) (uint64, bool) {
	for k := b / chunkBits; ; k++ {
		c := x.chunks[k]
		if c == nil {
			// Skip to the next chunk that exists.
			nk, ok := x.nextChunk(k)
			if !ok {
				return 0, false
			}
			k, c = nk, x.chunks[nk]
			if k*chunkBits > b {
				b = k * chunkBits
			}
		}
		for w := int(b % chunkBits / 64); w < chunkWords; w++ {
			word := c[w]
			if uint64(w) == b%chunkBits/64 {
				word &^= 1<<(b%64) - 1
			}
			if word != 0 {
				return k*chunkBits + uint64(w*64+bits.TrailingZeros64(word)), true
			}
		}
		b = (k + 1) * chunkBits
	}
}

// nextChunk returns the lowest chunk number at or after k that exists.
func (x *index) nextChunk(k uint64) (uint64, bool) {
	i, _ := slices.BinarySearch(x.keys, k)
	if i == len(x.keys) {
		return 0, false
	}
	return x.keys[i], true
}
