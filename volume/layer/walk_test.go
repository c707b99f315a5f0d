package layer

import (
	"testing"
	"time"
)

// A merge walks the snapshot's index; on a sparse layer (data in every
// other 128 MiB region) the walk must not be quadratic in the number of
// regions. (Found in review: 8192 blocks over 2 TiB took over a second.)
func TestSparseIndexWalk(t *testing.T) {
	var x index
	const chunks = 16384 // 2 TiB
	for k := uint64(0); k < chunks; k += 2 {
		x.set(k * chunkBits)
	}
	start := time.Now()
	n, next := 0, uint64(0)
	for {
		b, ok := x.next(next)
		if !ok {
			break
		}
		n, next = n+1, b+1
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("walking %d blocks of a sparse 2 TiB index took %v", n, d)
	}
}
