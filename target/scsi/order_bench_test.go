package scsi

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"
)

// nullDevice stores nothing: benchmarks of the target's own cost.
type nullDevice struct{ size int64 }

func (d nullDevice) Size() int64                                        { return d.size }
func (d nullDevice) ReadAt(context.Context, []byte, int64) error        { return nil }
func (d nullDevice) WriteAt(context.Context, []byte, int64, bool) error { return nil }
func (d nullDevice) Flush(context.Context) error                        { return nil }

// BenchmarkWrite4KParallel: 4 KiB writes to distinct blocks from many
// goroutines, the target's cost alone (the device does nothing).
func BenchmarkWrite4KParallel(b *testing.B) {
	tg := newTarget(b, nullDevice{64 << 20})
	var next atomic.Uint32
	b.ReportAllocs()
	b.SetBytes(4096)
	b.RunParallel(func(pb *testing.PB) {
		cdb := cdb10(0x2a, 0, 8)
		cmd := &Command{Nexus: nexus, CDB: cdb, DataOut: make([]byte, 4096)}
		for pb.Next() {
			binary.BigEndian.PutUint32(cdb[2:], next.Add(1)%16384*8)
			if r := tg.Execute(context.Background(), cmd); r.Status != StatusGood {
				b.Fatalf("status %#x", r.Status)
			}
		}
	})
}
