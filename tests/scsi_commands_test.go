package tests

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/initiator"
)

// session logs in to a volume of n as the given initiator.
func (n *node) session(t *testing.T, volume, name string, isid byte) *initiator.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := initiator.Dial(ctx, initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:" + volume,
		Name: name, ISID: [6]byte{0x80, 0, 0, 0, 0, isid}})
	if err != nil {
		t.Fatal(err)
	}
	// Clear the unit attentions a new I_T nexus sees.
	for i := 0; i < 5; i++ {
		if r, err := s.Do(make([]byte, 6), nil, 0); err != nil {
			t.Fatal(err)
		} else if r.Status == 0 {
			return s
		}
	}
	t.Fatalf("%s: unit attentions do not clear", name)
	return nil
}

func mustDo(t *testing.T, s *initiator.Session, what string, cdb, out []byte, readLen uint32, status byte) initiator.Response {
	t.Helper()
	r, err := s.Do(cdb, out, readLen)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if r.Status != status {
		k, a := r.SenseKey()
		t.Fatalf("%s: status %#x (sense %x/%04x), want %#x", what, r.Status, k, a, status)
	}
	return r
}

func prOut(action, typ byte, key, saKey uint64, aptpl bool) ([]byte, []byte) {
	p := make([]byte, 24)
	binary.BigEndian.PutUint64(p, key)
	binary.BigEndian.PutUint64(p[8:], saKey)
	if aptpl {
		p[20] = 1
	}
	return []byte{0x5f, action, typ, 0, 0, 0, 0, 0, 24, 0}, p
}

// readKeys returns the registered keys (PERSISTENT RESERVE IN, READ KEYS).
func readKeys(t *testing.T, s *initiator.Session) []uint64 {
	t.Helper()
	r := mustDo(t, s, "READ KEYS", []byte{0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil, 4096, statusGood)
	var keys []uint64
	for i := 8; i+8 <= len(r.Data); i += 8 {
		keys = append(keys, binary.BigEndian.Uint64(r.Data[i:]))
	}
	return keys
}

// readReservation returns the holder's key and the reservation type (READ
// RESERVATION); type 0 when there is none.
func readReservation(t *testing.T, s *initiator.Session) (uint64, byte) {
	t.Helper()
	r := mustDo(t, s, "READ RESERVATION", []byte{0x5e, 1, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil, 4096, statusGood)
	if len(r.Data) < 24 {
		return 0, 0
	}
	return binary.BigEndian.Uint64(r.Data[8:]), r.Data[21] & 0x0f
}

func write10(lba uint32, blocks uint16) []byte {
	c := make([]byte, 10)
	c[0] = 0x2a
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], blocks)
	return c
}

const (
	statusGood                = 0x00
	statusCheckCondition      = 0x02
	statusReservationConflict = 0x18
)

// Reservations registered before kill -9 of the node are there after the
// restart, and still enforced.
func TestReservationsSurviveKill9(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "cluster", "--size", "64MiB")
	a := n.session(t, "cluster", "iqn.2026-11.test:node-a", 1)
	b := n.session(t, "cluster", "iqn.2026-11.test:node-b", 1)
	c, p := prOut(0, 0, 0, 0xaaaa, true)
	mustDo(t, a, "A registers", c, p, 0, statusGood)
	c, p = prOut(0, 0, 0, 0xbbbb, true)
	mustDo(t, b, "B registers", c, p, 0, statusGood)
	c, p = prOut(1, 1, 0xaaaa, 0, false) // WRITE EXCLUSIVE
	mustDo(t, a, "A reserves", c, p, 0, statusGood)
	mustDo(t, b, "B writes under A's reservation", write10(0, 1), make([]byte, 512), 0, statusReservationConflict)
	a.Close()
	b.Close()

	n.kill()
	n.start()

	a = n.session(t, "cluster", "iqn.2026-11.test:node-a", 1)
	b = n.session(t, "cluster", "iqn.2026-11.test:node-b", 1)
	defer a.Close()
	defer b.Close()
	if keys := readKeys(t, b); !slices.Equal(keys, []uint64{0xaaaa, 0xbbbb}) {
		t.Fatalf("after kill -9, registered keys %x, want [aaaa bbbb]", keys)
	}
	if key, typ := readReservation(t, b); key != 0xaaaa || typ != 1 {
		t.Fatalf("after kill -9, reservation key %x type %d, want A's WRITE EXCLUSIVE", key, typ)
	}
	mustDo(t, b, "B writes after the restart", write10(0, 1), make([]byte, 512), 0, statusReservationConflict)
	mustDo(t, a, "A writes after the restart", write10(0, 1), make([]byte, 512), 0, statusGood)
}

// A cluster hands its reservation to the standby host with REGISTER AND
// MOVE (format 01 TransportID: B's port, ISID and all), and the move
// survives kill -9: after the restart B holds the reservation with the key
// A gave it, and A, which asked to be unregistered, is not registered.
func TestReservationMovesToTheStandbyHost(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "cluster", "--size", "64MiB")
	a := n.session(t, "cluster", "iqn.2026-11.test:node-a", 1)
	b := n.session(t, "cluster", "iqn.2026-11.test:node-b", 7)
	c, p := prOut(0, 0, 0, 0xaaaa, true)
	mustDo(t, a, "A registers", c, p, 0, statusGood)
	c, p = prOut(1, 1, 0xaaaa, 0, false)
	mustDo(t, a, "A reserves", c, p, 0, statusGood)
	mustDo(t, b, "B, unregistered, writes", write10(0, 1), make([]byte, 512), 0, statusReservationConflict)

	name := "iqn.2026-11.test:node-b,i,0x800000000007\x00"
	tid := make([]byte, 4, 4+len(name)+3)
	tid[0] = 0x40 | 0x05 // format 01, iSCSI
	tid = append(tid, name...)
	for len(tid)%4 != 0 {
		tid = append(tid, 0)
	}
	binary.BigEndian.PutUint16(tid[2:], uint16(len(tid)-4))
	params := make([]byte, 24, 24+len(tid))
	binary.BigEndian.PutUint64(params, 0xaaaa)
	binary.BigEndian.PutUint64(params[8:], 0xbbbb)
	params[17] = 0x02 | 0x01                   // UNREG, APTPL
	binary.BigEndian.PutUint16(params[18:], 1) // relative target port 1
	binary.BigEndian.PutUint32(params[20:], uint32(len(tid)))
	params = append(params, tid...)
	cdb := []byte{0x5f, 7, 1, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[5:], uint32(len(params)))
	mustDo(t, a, "A moves its reservation to B", cdb, params, 0, statusGood)
	mustDo(t, b, "B writes", write10(0, 1), make([]byte, 512), 0, statusGood)
	a.Close()
	b.Close()

	n.kill()
	n.start()

	a = n.session(t, "cluster", "iqn.2026-11.test:node-a", 1)
	b = n.session(t, "cluster", "iqn.2026-11.test:node-b", 7)
	defer a.Close()
	defer b.Close()
	if keys := readKeys(t, a); !slices.Equal(keys, []uint64{0xbbbb}) {
		t.Fatalf("after the move and kill -9, registered keys %x, want B's bbbb only", keys)
	}
	if key, typ := readReservation(t, a); key != 0xbbbb || typ != 1 {
		t.Fatalf("after the move and kill -9, reservation key %x type %d, want B's WRITE EXCLUSIVE", key, typ)
	}
	mustDo(t, b, "B writes after the restart", write10(0, 1), make([]byte, 512), 0, statusGood)
	mustDo(t, a, "A writes after the restart", write10(0, 1), make([]byte, 512), 0, statusReservationConflict)
}

// Several initiators race COMPARE AND WRITE on one block, round after
// round, the way VMFS heartbeats and locks do: each round exactly one wins,
// the others see MISCOMPARE, and the block holds the winner's value.
func TestCompareAndWriteRace(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "vmfs", "--size", "64MiB")
	const hosts, rounds = 4, 40
	var ss []*initiator.Session
	for h := 0; h < hosts; h++ {
		s := n.session(t, "vmfs", fmt.Sprintf("iqn.2026-11.test:esx-%d", h), byte(h+1))
		defer s.Close()
		ss = append(ss, s)
	}
	read := []byte{0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0} // block 9
	for round := 1; round <= rounds; round++ {
		cur := mustDo(t, ss[0], "read heartbeat", read, nil, 512, statusGood).Data
		var wg sync.WaitGroup
		won := make([]bool, hosts)
		errs := make(chan error, hosts)
		for h := range ss {
			wg.Add(1)
			go func(h int) {
				defer wg.Done()
				out := make([]byte, 1024)
				copy(out, cur)
				binary.BigEndian.PutUint32(out[512:], uint32(round))
				out[516] = byte(h)
				cdb := make([]byte, 16)
				cdb[0], cdb[13] = 0x89, 1
				binary.BigEndian.PutUint64(cdb[2:], 9)
				r, err := ss[h].Do(cdb, out, 0)
				switch key, asc := r.SenseKey(); {
				case err != nil:
					errs <- err
				case r.Status == statusGood:
					won[h] = true
				case r.Status != statusCheckCondition || key != 0x0e || asc != 0x1d00:
					errs <- fmt.Errorf("host %d: status %#x sense %x/%04x, want GOOD or MISCOMPARE", h, r.Status, key, asc)
				}
			}(h)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: %v", round, err)
		}
		winner := -1
		for h, w := range won {
			if w && winner >= 0 {
				t.Fatalf("round %d: hosts %d and %d both won", round, winner, h)
			}
			if w {
				winner = h
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no host won", round)
		}
		got := mustDo(t, ss[hosts-1], "read back", read, nil, 512, statusGood).Data
		if binary.BigEndian.Uint32(got) != uint32(round) || int(got[4]) != winner {
			t.Fatalf("round %d: block holds % x, want the winner's (%d) update", round, got[:8], winner)
		}
	}
}

// UNMAP and WRITE SAME with UNMAP give space back (the volume's allocated
// bytes shrink), and GET LBA STATUS (read by qemu-img map) agrees.
func TestUnmapShrinksAndLBAStatusAgrees(t *testing.T) {
	requireTool(t, "qemu-io", "qemu-img")
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "thin", "--size", "256MiB")
	url := n.url("thin")
	alloc := func() float64 { return n.volumeJSON("thin")["allocated_bytes"].(float64) }
	const mib = 1 << 20
	if _, err := run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x61 0 64M", url); err != nil {
		t.Fatal(err)
	}
	full := alloc()
	if full < 64*mib {
		t.Fatalf("after writing 64 MiB, allocated %.1f MiB", full/mib)
	}
	// UNMAP 16 MiB at 8 MiB (qemu-io discard on a discard=unmap drive).
	opts := "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=" + n.portal +
		",file.target=iqn.2026-11.io.tandem:thin,file.lun=0,discard=unmap"
	if out, err := run(t, time.Minute, "qemu-io", "--image-opts", "-c", "discard 8M 16M", opts); err != nil {
		t.Fatalf("discard: %v\n%s", err, out)
	}
	afterUnmap := alloc()
	if full-afterUnmap < 15*mib {
		t.Fatalf("UNMAP of 16 MiB gave back %.1f MiB", (full-afterUnmap)/mib)
	}
	// WRITE SAME with UNMAP: write zeroes allowed to unmap, 16 MiB at 32 MiB.
	if out, err := run(t, time.Minute, "qemu-io", "--image-opts", "-c", "write -z -u 32M 16M", opts); err != nil {
		t.Fatalf("write zeroes: %v\n%s", err, out)
	}
	afterWS := alloc()
	if afterUnmap-afterWS < 15*mib {
		t.Fatalf("WRITE SAME with UNMAP of 16 MiB gave back %.1f MiB", (afterUnmap-afterWS)/mib)
	}
	// qemu-img map reads GET LBA STATUS: data at 0-8M, 24-32M, 48-64M; the
	// unmapped ranges are reported as zero (not data).
	out, err := run(t, time.Minute, "qemu-img", "map", "--output=json", "--image-opts", opts)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		start, length int64
		data          bool
	}{{0, 8 * mib, true}, {8 * mib, 16 * mib, false}, {24 * mib, 8 * mib, true}, {32 * mib, 16 * mib, false}, {48 * mib, 16 * mib, true}}
	for _, w := range want {
		needle := fmt.Sprintf(`"start": %d, "length": %d, "depth": 0, "present": %v, "zero": %v, "data": %v`, w.start, w.length, true, !w.data, w.data)
		if !strings.Contains(out, needle) {
			t.Errorf("qemu-img map does not report %d+%d as data=%v:\n%s", w.start, w.length, w.data, out)
		}
	}
}
