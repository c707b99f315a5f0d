package replication

import (
	"context"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"tandem.io/tandem/replication/memnet"
	"tandem.io/tandem/volume/block"
	"tandem.io/tandem/volume/catalog"
)

// tcpDialer dials nodes at fixed TCP addresses.
type tcpDialer map[string]string

func (d tcpDialer) Dial(ctx context.Context, node string) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d[node])
}

const benchSize = 64 << 20

// benchMirror returns a Mirror with one replica, over memnet or TCP;
// tune, if set, changes its configuration.
func benchMirror(b *testing.B, tcp bool, tune ...func(*MirrorConfig)) *Mirror {
	local := newMemCopy(benchSize)
	copies := newMemCopies()
	copies.add(testVol, newMemCopy(benchSize))
	srv, err := NewServer(ServerConfig{Copies: copies, Epochs: newMemEpochs()})
	if err != nil {
		b.Fatal(err)
	}
	var l net.Listener
	var dialer Dialer
	if tcp {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		dialer = tcpDialer{"r1": l.Addr().String()}
	} else {
		n := memnet.New(0)
		l, err = n.Listen("r1")
		dialer = n.Dialer("p")
	}
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		srv.Serve(context.Background(), l)
		close(done)
	}()
	cfg := MirrorConfig{
		VolumeID: testVol, Epoch: 1, Self: "p", Local: local, InSync: []string{"r1"},
		Dialer: dialer, Dirty: newMemDirtyLog(),
		Drop:   func(context.Context, string) error { return nil },
		Rejoin: func(context.Context, string) error { return nil },
	}
	for _, f := range tune {
		f(&cfg)
	}
	m, err := NewMirror(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		m.Close()
		srv.Close()
		<-done
	})
	return m
}

// benchWrites writes size bytes per operation with qd operations in
// flight, to distinct offsets.
func benchWrites(b *testing.B, dev block.Device, size, qd int) {
	// Touch every page first: page faults are not what is measured.
	for off := int64(0); off < benchSize; off += 1 << 20 {
		if err := dev.WriteAt(context.Background(), make([]byte, 1<<20), off, false); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	var wg sync.WaitGroup
	per := (b.N + qd - 1) / qd
	slots := benchSize / size
	b.ResetTimer()
	for w := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, size)
			for i := range per {
				off := int64((w+i*qd)%slots) * int64(size)
				if err := dev.WriteAt(context.Background(), p, off, false); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkWrite(b *testing.B) {
	cases := []struct {
		name     string
		size, qd int
	}{
		{"4KiB-QD1", 4 << 10, 1},
		{"4KiB-QD32", 4 << 10, 32},
		{"1MiB-QD1", 1 << 20, 1},
	}
	for _, c := range cases {
		b.Run("local/"+c.name, func(b *testing.B) { benchWrites(b, newMemCopy(benchSize), c.size, c.qd) })
		b.Run("memnet/"+c.name, func(b *testing.B) { benchWrites(b, benchMirror(b, false), c.size, c.qd) })
		b.Run("tcp/"+c.name, func(b *testing.B) { benchWrites(b, benchMirror(b, true), c.size, c.qd) })
	}
}

// BenchmarkActivityLog: QD1 4 KiB writes at random over a working set
// that fits in the activity log (after the first pass, no Mark) and over
// one four times larger (nearly every write marks a new region — one
// commit of the bbolt catalog, as in the appliance — and every
// ActiveRegions/4 of them the copies are flushed to make room).
func BenchmarkActivityLog(b *testing.B) {
	const regionSize, active = 64 << 10, 256
	for _, c := range []struct {
		name    string
		regions int64
	}{
		{"fits", active / 2},
		{"spills", 4 * active},
	} {
		b.Run(c.name, func(b *testing.B) {
			cat, err := catalog.Open(filepath.Join(b.TempDir(), "catalog.db"), catalog.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { cat.Close() })
			m := benchMirror(b, false, func(cfg *MirrorConfig) {
				cfg.Dirty, cfg.RegionSize, cfg.ActiveRegions = catalogDirty{cat}, regionSize, active
			})
			set := c.regions * regionSize
			rng := rand.New(rand.NewPCG(1, 1))
			p := make([]byte, 4096)
			for off := int64(0); off < set; off += regionSize { // the working set in the log, if it fits
				if err := m.WriteAt(context.Background(), p, off, false); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(len(p)))
			b.ResetTimer()
			for range b.N {
				if err := m.WriteAt(context.Background(), p, rng.Int64N(set/4096)*4096, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// catalogDirty is a DirtyLog on the volume catalog (bbolt).
type catalogDirty struct{ c *catalog.Catalog }

func (d catalogDirty) Mark(vol, rep string, regions []uint64) error {
	return d.c.MarkDirty(vol, rep, regions)
}
func (d catalogDirty) Dirty(vol, rep string) ([]uint64, error) { return d.c.Dirty(vol, rep) }
func (d catalogDirty) Clear(vol, rep string, regions []uint64) error {
	return d.c.ClearDirty(vol, rep, regions)
}
