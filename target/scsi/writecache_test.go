package scsi

import (
	"context"
	"sync"
	"testing"
)

// fuaDevice records, for each WriteAt, whether it is durable: asked with
// FUA, or followed by a Flush.
type fuaDevice struct {
	*memDevice
	mu  sync.Mutex
	fua []bool
}

func (d *fuaDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.mu.Lock()
	d.fua = append(d.fua, fua)
	d.mu.Unlock()
	return d.memDevice.WriteAt(ctx, p, off, fua)
}

func (d *fuaDevice) Flush(ctx context.Context) error {
	d.mu.Lock()
	for i := range d.fua {
		d.fua[i] = true
	}
	d.mu.Unlock()
	return nil
}

func (d *fuaDevice) take() []bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.fua
	d.fua = nil
	return f
}

// With the write cache disabled (MODE SELECT, caching page WCE=0) every
// write is on the medium when its GOOD goes out: the initiator sends no
// SYNCHRONIZE CACHE. WRITE did so already; WRITE SAME, COMPARE AND WRITE
// and EXTENDED COPY's destination writes now do too. (Found in review.)
func TestWriteCacheDisabledHonouredByEveryWrite(t *testing.T) {
	dev := &fuaDevice{memDevice: newMem(1 << 20)}
	naa := [16]byte{0x6a, 0xf}
	lu, err := NewLogicalUnit(LUConfig{Device: dev, NAA: naa})
	if err != nil {
		t.Fatal(err)
	}
	tg, _ := NewTarget(TargetConfig{LUNs: map[uint64]*LogicalUnit{0: lu}})
	exec := func(cdb, out []byte) Result {
		return tg.Execute(context.Background(), &Command{Nexus: nexus, CDB: cdb, DataOut: out, ExpectedLength: uint32(len(out))})
	}
	exec(make([]byte, 6), nil) // unit attention
	page := make([]byte, 4+20)
	page[4], page[5] = 0x08, 18 // caching page, WCE=0
	if r := exec([]byte{0x15, 0x10, 0, 0, byte(len(page)), 0}, page); r.Status != StatusGood {
		t.Fatalf("MODE SELECT WCE=0: status %#x", r.Status)
	}
	xcopy := xcopyParams([][16]byte{naa}, [][5]uint64{{0, 0, 8, 0, 100}})
	for _, c := range []struct {
		name string
		cdb  []byte
		out  []byte
	}{
		{"WRITE (10)", []byte{0x2a, 0, 0, 0, 0, 16, 0, 0, 8, 0}, make([]byte, 4096)},
		{"WRITE SAME (10)", []byte{0x41, 0, 0, 0, 0, 32, 0, 0, 8, 0}, make([]byte, 512)},
		{"COMPARE AND WRITE", []byte{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 48, 0, 0, 0, 1, 0, 0}, make([]byte, 1024)},
		{"EXTENDED COPY", xcopyCDB(len(xcopy)), xcopy},
	} {
		r := exec(c.cdb, c.out)
		if r.Status != StatusGood {
			k, a := senseOf(r)
			t.Errorf("%s: status %#x sense %x/%04x", c.name, r.Status, k, a)
			continue
		}
		fua := dev.take()
		if len(fua) == 0 {
			t.Errorf("%s: no write reached the device", c.name)
		}
		for _, f := range fua {
			if !f {
				t.Errorf("%s: GOOD with the write cache off, but the device was not asked for a durable write", c.name)
				break
			}
		}
	}
}
