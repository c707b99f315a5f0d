package tests

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/initiator"
)

// The scenario through a real initiator (qemu-io): write A,
// snapshot s1, write B, snapshot s2, write C; a clone of s1 reads A, a clone
// of s2 reads B, the volume reads C; revert to s1 reads A; deleting s1 after
// deleting its clone keeps s2 and the volume intact, and space comes back.
func TestSnapshotsClonesRevert(t *testing.T) {
	requireTool(t, "qemu-io")
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "prod", "--size", "256MiB")
	write := func(vol string, p int) {
		t.Helper()
		if out, err := run(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %d 0 16M", p), "-c", "flush", n.url(vol)); err != nil {
			t.Fatalf("write %#x to %s: %v\n%s", p, vol, err, out)
		}
	}
	reads := func(vol string, p int) {
		t.Helper()
		if out, err := run(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("read -P %d 0 16M", p), n.url(vol)); err != nil || strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("%s does not read %#x: %v\n%s", vol, p, err, out)
		}
	}
	const A, B, C, L = 0xa1, 0xb2, 0xc3, 0x1a
	write("prod", A)
	n.mustCLI("snapshot", "create", "prod", "s1")
	write("prod", B)
	n.mustCLI("snapshot", "create", "prod", "s2")
	write("prod", C)
	n.mustCLI("volume", "clone", "prod@s1", "lab1")
	n.mustCLI("volume", "clone", "prod@s2", "lab2")
	reads("lab1", A)
	reads("lab2", B)
	reads("prod", C)
	write("lab1", L) // a lab copy's writes stay in the lab
	reads("prod", C)
	reads("lab2", B)

	list := n.mustCLI("snapshot", "list", "prod")
	if !strings.Contains(list, "s1") || !strings.Contains(list, "s2") || !strings.Contains(list, "lab1") {
		t.Fatalf("snapshot list:\n%s", list)
	}
	n.mustCLI("volume", "revert", "prod", "s1")
	reads("prod", A)

	if _, err := n.cli("snapshot", "delete", "prod", "s1"); err == nil || !strings.Contains(err.Error(), "clones lab1") {
		t.Fatalf("deleting a snapshot with a clone: %v", err)
	}
	total := func() float64 {
		var sum float64
		for _, v := range []string{"prod", "lab1", "lab2"} {
			if out, err := n.cli("volume", "show", v, "-o", "json"); err == nil && strings.Contains(out, "allocated_bytes") {
				sum += n.volumeJSON(v)["allocated_bytes"].(float64)
			}
		}
		return sum
	}
	before := total()
	n.mustCLI("volume", "delete", "lab1")
	n.mustCLI("snapshot", "delete", "prod", "s1")
	after := total()
	if after >= before {
		t.Fatalf("allocated bytes %.0f -> %.0f after deleting the clone and s1", before, after)
	}
	reads("prod", A)
	reads("lab2", B)
	n.mustCLI("volume", "revert", "prod", "s2")
	reads("prod", B)

	// Everything is still there after a restart.
	n.stop()
	n.start()
	reads("prod", B)
	reads("lab2", B)
	if s := n.volumeJSON("prod")["snapshots"].([]any); len(s) != 1 {
		t.Fatalf("after restart, snapshots %v", s)
	}
}

// Revert with an initiator logged in is refused with a message that says
// so, and changes nothing; --force closes the session first, and the
// initiator's next login, a new I_T nexus, gets POWER ON, RESET, OR BUS
// DEVICE RESET OCCURRED on its first command (the promise of
// appliance.Node.RevertVolume) and reads the snapshot's content.
func TestRevertWithSessions(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "busy", "--size", "64MiB")
	const host = "iqn.2026-11.test:host"
	const before, after = 0xa1, 0xb2
	blocks := func(p byte) []byte { return bytes.Repeat([]byte{p}, 64<<10) } // LBAs 0-127
	read := []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 128, 0}
	reads := func(s *initiator.Session, what string, p byte) {
		t.Helper()
		if r := mustDo(t, s, what, read, nil, 64<<10, statusGood); !bytes.Equal(r.Data, blocks(p)) {
			t.Fatalf("%s: LBAs 0-127 do not hold %#x (%d bytes: % x...)", what, p, len(r.Data), r.Data[:min(len(r.Data), 8)])
		}
	}
	s := n.session(t, "busy", host, 1)
	mustDo(t, s, "write the snapshot's content", write10(0, 128), blocks(before), 0, statusGood)
	n.mustCLI("snapshot", "create", "busy", "before")
	mustDo(t, s, "write over it", write10(0, 128), blocks(after), 0, statusGood)
	_, err := n.cli("volume", "revert", "busy", "before")
	if err == nil || !strings.Contains(err.Error(), "logged in") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("revert with a session: %v", err)
	}
	reads(s, "read after the refused revert", after)

	n.mustCLI("volume", "revert", "busy", "before", "--force")
	if _, err := s.Do(make([]byte, 6), nil, 0); err == nil {
		t.Fatal("the session survived a forced revert")
	}
	s.Close()
	// Not n.session, which clears the unit attentions: the first command
	// of the new login must get the promised one.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s2, err := initiator.Dial(ctx, initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:busy",
		Name: host, ISID: [6]byte{0x80, 0, 0, 0, 0, 1}})
	if err != nil {
		t.Fatalf("login after the forced revert: %v", err)
	}
	defer s2.Close()
	r, err := s2.Do(make([]byte, 6), nil, 0) // TEST UNIT READY
	if err != nil {
		t.Fatal(err)
	}
	if k, asc := r.SenseKey(); r.Status != statusCheckCondition || k != 6 || asc != 0x2900 {
		t.Fatalf("first command after the forced revert: status %#x sense %x/%04x, want UNIT ATTENTION 29h/00h (POWER ON, RESET, OR BUS DEVICE RESET OCCURRED)", r.Status, k, asc)
	}
	for i := 0; ; i++ { // any further unit attentions, then GOOD
		r, err := s2.Do(make([]byte, 6), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status == statusGood {
			break
		}
		if k, asc := r.SenseKey(); i == 4 || k != 6 {
			t.Fatalf("TEST UNIT READY after the forced revert: status %#x sense %x/%04x", r.Status, k, asc)
		}
	}
	reads(s2, "read after the forced revert", before)
}

// Growing a volume: the new capacity is seen, with a unit attention;
// shrinking is refused.
func TestResize(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "grow", "--size", "64MiB")
	s := n.session(t, "grow", "iqn.2026-11.test:host", 1)
	defer s.Close()
	if _, err := n.cli("volume", "resize", "grow", "--size", "32MiB"); err == nil || !strings.Contains(err.Error(), "shrink") {
		t.Fatalf("shrink: %v", err)
	}
	n.mustCLI("volume", "resize", "grow", "--size", "128MiB")
	r, err := s.Do(make([]byte, 6), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if k, asc := r.SenseKey(); r.Status != statusCheckCondition || k != 6 || asc != 0x2a09 {
		t.Fatalf("after resize: status %#x sense %x/%04x, want CAPACITY DATA HAS CHANGED", r.Status, k, asc)
	}
	rc := mustDo(t, s, "READ CAPACITY 16", []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil, 32, statusGood)
	if last := uint64(rc.Data[4])<<24 | uint64(rc.Data[5])<<16 | uint64(rc.Data[6])<<8 | uint64(rc.Data[7]); last != 128<<20/512-1 {
		t.Fatalf("capacity after resize: last LBA %d", last)
	}
}
