package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/initiator"
)

// Issue 8, defect 2, through the real node: EXTENDED COPY sent to one
// volume may only touch another volume the same initiator has logged in to
// (past that volume's CHAP and allow list), and each volume gets the checks
// a READ (source) or WRITE (destination) by that initiator would get there:
// reservations, software write protect. Volume a is where the copies are
// sent; b is the other volume.
func TestExtendedCopyAccess(t *testing.T) {
	n := startNode(t, t.TempDir())
	const (
		x    = "iqn.2026-11.test:esx-x" // sends the copies
		y    = "iqn.2026-11.test:esx-y" // another host
		size = 64 * 512                 // bytes copied: 64 blocks
	)
	// volumes creates a and b (extra flags for b), fills a with 0xaa and b
	// with 0xbb, and returns their NAA designators.
	volumes := func(t *testing.T, a, b string, bFlags ...string) (naaA, naaB [16]byte) {
		t.Helper()
		n.mustCLI("volume", "create", a, "--size", "64MiB")
		n.mustCLI(append([]string{"volume", "create", b, "--size", "64MiB"}, bFlags...)...)
		for _, v := range []struct {
			name string
			naa  *[16]byte
			fill byte
		}{{a, &naaA, 0xaa}, {b, &naaB, 0xbb}} {
			raw, err := hex.DecodeString(n.volumeJSON(v.name)["naa"].(string))
			if err != nil || len(raw) != 16 {
				t.Fatalf("naa of %s: %q %v", v.name, n.volumeJSON(v.name)["naa"], err)
			}
			copy(v.naa[:], raw)
			if len(bFlags) > 0 && v.name == b {
				continue // b may refuse the test's initiators: it stays zeros
			}
			s := n.session(t, v.name, "iqn.2026-11.test:setup", 9)
			mustDo(t, s, "fill "+v.name, write10(0, 128), bytes.Repeat([]byte{v.fill}, 128*512), 0, statusGood)
			s.Close()
		}
		return naaA, naaB
	}
	// reads returns the first bytes of a volume, read by a session of
	// initiator as.
	reads := func(t *testing.T, vol, as string) []byte {
		t.Helper()
		s := n.session(t, vol, as, 8)
		defer s.Close()
		return mustDo(t, s, "read "+vol, read10(0, 64), nil, size, statusGood).Data
	}
	xcopy := func(t *testing.T, s *initiator.Session, naas [][16]byte, src, dst int) initiator.Response {
		t.Helper()
		p := xcopyList(naas, src, dst, 64)
		cdb := make([]byte, 16)
		cdb[0] = 0x83
		binary.BigEndian.PutUint32(cdb[10:], uint32(len(p)))
		r, err := s.Do(cdb, p, 0)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	wantSense := func(t *testing.T, what string, r initiator.Response, key byte, asc uint16) {
		t.Helper()
		if k, a := r.SenseKey(); r.Status != statusCheckCondition || k != key || a != asc {
			t.Fatalf("%s: status %#x sense %x/%04x, want CHECK CONDITION %x/%04x", what, r.Status, k, a, key, asc)
		}
	}
	// holds checks that the first blocks of vol, read by as, are fill.
	holds := func(t *testing.T, vol, as string, fill byte) {
		t.Helper()
		if got := reads(t, vol, as); !bytes.Equal(got, bytes.Repeat([]byte{fill}, size)) {
			t.Fatalf("%s starts % x, want %#x", vol, got[:8], fill)
		}
	}

	t.Run("a x logged in to a only", func(t *testing.T) {
		naaA, naaB := volumes(t, "a1", "b1")
		s := n.session(t, "a1", x, 1)
		defer s.Close()
		wantSense(t, "copy a1 to b1", xcopy(t, s, [][16]byte{naaA, naaB}, 0, 1), 0x0a, 0x0d02)
		wantSense(t, "copy b1 to a1", xcopy(t, s, [][16]byte{naaA, naaB}, 1, 0), 0x0a, 0x0d02)
		holds(t, "b1", y, 0xbb)
		holds(t, "a1", y, 0xaa)
	})

	t.Run("a2 b's allow list and CHAP keep x out", func(t *testing.T) {
		naaA, naaB := volumes(t, "a2", "b2", "--allow", y)
		_, naaC := volumes(t, "a2c", "b2c", "--chap-user", "u", "--chap-secret", "0123456789abcdef")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if s, err := initiator.Dial(ctx, initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:b2", Name: x}); err == nil {
			s.Close()
			t.Fatal("x logged in to b2 past its allow list")
		}
		s := n.session(t, "a2", x, 1)
		defer s.Close()
		wantSense(t, "copy a2 to b2 (allow list)", xcopy(t, s, [][16]byte{naaA, naaB}, 0, 1), 0x0a, 0x0d02)
		wantSense(t, "copy a2 to b2c (CHAP)", xcopy(t, s, [][16]byte{naaA, naaC}, 0, 1), 0x0a, 0x0d02)
		wantSense(t, "copy b2c to a2 (CHAP)", xcopy(t, s, [][16]byte{naaA, naaC}, 1, 0), 0x0a, 0x0d02)
		holds(t, "b2", y, 0)
		holds(t, "a2", y, 0xaa)
	})

	t.Run("b b reserved by another initiator", func(t *testing.T) {
		naaA, naaB := volumes(t, "a3", "b3")
		sa := n.session(t, "a3", x, 1)
		defer sa.Close()
		sb := n.session(t, "b3", x, 1)
		defer sb.Close()
		other := n.session(t, "b3", y, 1)
		defer other.Close()
		c, p := prOut(0, 0, 0, 0xfeed, false)
		mustDo(t, other, "y registers on b3", c, p, 0, statusGood)
		c, p = prOut(1, 3, 0xfeed, 0, false) // EXCLUSIVE ACCESS
		mustDo(t, other, "y reserves b3", c, p, 0, statusGood)
		mustDo(t, sb, "x writes b3 directly", write10(0, 1), make([]byte, 512), 0, statusReservationConflict)
		if r := xcopy(t, sa, [][16]byte{naaA, naaB}, 0, 1); r.Status != statusReservationConflict {
			k, a := r.SenseKey()
			t.Fatalf("copy a3 to b3 under y's EXCLUSIVE ACCESS: status %#x sense %x/%04x, want RESERVATION CONFLICT", r.Status, k, a)
		}
		if r := xcopy(t, sa, [][16]byte{naaA, naaB}, 1, 0); r.Status != statusReservationConflict {
			k, a := r.SenseKey()
			t.Fatalf("copy b3 to a3 under y's EXCLUSIVE ACCESS: status %#x sense %x/%04x, want RESERVATION CONFLICT", r.Status, k, a)
		}
		// y, holding the reservation, reads b3.
		if got := mustDo(t, other, "y reads b3", read10(0, 64), nil, size, statusGood).Data; !bytes.Equal(got, bytes.Repeat([]byte{0xbb}, size)) {
			t.Fatalf("b3 starts % x, want 0xbb", got[:8])
		}
		holds(t, "a3", y, 0xaa)
	})

	t.Run("c b software write protected", func(t *testing.T) {
		naaA, naaB := volumes(t, "a4", "b4")
		sa := n.session(t, "a4", x, 1)
		defer sa.Close()
		sb := n.session(t, "b4", x, 1)
		defer sb.Close()
		setSWP(t, sb, true)
		mustDo(t, sb, "x writes b4 directly", write10(0, 1), make([]byte, 512), 0, statusCheckCondition)
		wantSense(t, "copy a4 to b4 with SWP", xcopy(t, sa, [][16]byte{naaA, naaB}, 0, 1), 0x07, 0x2702)
		holds(t, "b4", y, 0xbb)
		// Reading a write-protected unit is allowed.
		if r := xcopy(t, sa, [][16]byte{naaA, naaB}, 1, 0); r.Status != statusGood {
			k, a := r.SenseKey()
			t.Fatalf("copy b4 to a4 with SWP on b4: status %#x sense %x/%04x", r.Status, k, a)
		}
		holds(t, "a4", y, 0xbb)
	})

	t.Run("d a to b by x logged in to both", func(t *testing.T) {
		naaA, naaB := volumes(t, "a5", "b5")
		sa := n.session(t, "a5", x, 1)
		defer sa.Close()
		sb := n.session(t, "b5", x, 1)
		defer sb.Close()
		if r := xcopy(t, sa, [][16]byte{naaA, naaB}, 0, 1); r.Status != statusGood {
			k, a := r.SenseKey()
			t.Fatalf("copy a5 to b5: status %#x sense %x/%04x", r.Status, k, a)
		}
		holds(t, "b5", y, 0xaa)
		// The copy may also be sent to the destination (ESX sends it to
		// either).
		mustDo(t, sa, "refill a5", write10(0, 64), bytes.Repeat([]byte{0xcc}, size), 0, statusGood)
		if r := xcopy(t, sb, [][16]byte{naaB, naaA}, 1, 0); r.Status != statusGood {
			k, a := r.SenseKey()
			t.Fatalf("copy a5 to b5 sent to b5: status %#x sense %x/%04x", r.Status, k, a)
		}
		holds(t, "b5", y, 0xcc)
	})
}

// xcopyList is an EXTENDED COPY (LID1) parameter list: one identification
// CSCD descriptor per NAA, one block-to-block segment of blocks from LBA 0
// of CSCD src to LBA 0 of CSCD dst.
func xcopyList(naas [][16]byte, src, dst int, blocks uint16) []byte {
	p := make([]byte, 16)
	for _, naa := range naas {
		d := make([]byte, 32)
		d[0] = 0xe4
		d[4], d[5], d[7] = 1, 3, 16 // binary, NAA, 16 bytes
		copy(d[8:], naa[:])
		d[30] = 2 // block length 512
		p = append(p, d...)
	}
	tdl := len(p) - 16
	s := make([]byte, 28)
	s[0] = 0x02
	binary.BigEndian.PutUint16(s[2:], 24)
	binary.BigEndian.PutUint16(s[4:], uint16(src))
	binary.BigEndian.PutUint16(s[6:], uint16(dst))
	binary.BigEndian.PutUint16(s[10:], blocks)
	p = append(p, s...)
	binary.BigEndian.PutUint16(p[2:], uint16(tdl))
	binary.BigEndian.PutUint32(p[8:], 28)
	return p
}

// setSWP sets or clears SWP in the control mode page (MODE SENSE, then
// MODE SELECT of the page with the bit changed).
func setSWP(t *testing.T, s *initiator.Session, on bool) {
	t.Helper()
	r := mustDo(t, s, "MODE SENSE control page", []byte{0x1a, 0x08, 0x0a, 0, 255, 0}, nil, 255, statusGood)
	if len(r.Data) < 4+12 || r.Data[4]&0x3f != 0x0a {
		t.Fatalf("MODE SENSE control page: % x", r.Data)
	}
	page := append([]byte(nil), r.Data[4:4+2+int(r.Data[5])]...)
	page[0] &= 0x3f // PS is reserved in MODE SELECT
	page[4] &^= 0x08
	if on {
		page[4] |= 0x08
	}
	p := append([]byte{0, 0, 0, 0}, page...)
	mustDo(t, s, "MODE SELECT SWP", []byte{0x15, 0x10, 0, 0, byte(len(p)), 0}, p, 0, statusGood)
}
