package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem.io/tandem/target/iscsi/initiator"
)

// Acceptance 1: discovery lists the target; INQUIRY and READ CAPACITY(16)
// answer through libiscsi's tools.
func TestDiscoveryInquiryCapacity(t *testing.T) {
	requireTool(t, "iscsi-ls", "iscsi-inq", "iscsi-readcapacity16")
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "demo", "--size", "1GiB")
	out, err := run(t, 30*time.Second, "iscsi-ls", "-s", "iscsi://"+n.portal)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "iqn.2026-11.io.tandem:demo") || !strings.Contains(out, "Lun:0") {
		t.Fatalf("iscsi-ls does not list the demo LUN:\n%s", out)
	}
	out, err = run(t, 30*time.Second, "iscsi-inq", n.url("demo"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Peripheral Device Type:DIRECT_ACCESS") && !strings.Contains(out, "DIRECT") {
		t.Fatalf("iscsi-inq:\n%s", out)
	}
	out, err = run(t, 30*time.Second, "iscsi-inq", "-e", "1", "-c", "131", n.url("demo"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Designator Type:(3) NAA") {
		t.Fatalf("VPD 0x83 has no NAA designator:\n%s", out)
	}
	out, err = run(t, 30*time.Second, "iscsi-readcapacity16", n.url("demo"))
	if err != nil {
		t.Fatal(err)
	}
	// 1 GiB of 512-byte blocks: last LBA 2097151.
	if !regexp.MustCompile(`(?i)Returned Logical Block Address:\s*2097151`).MatchString(out) ||
		!regexp.MustCompile(`(?i)Logical Block Length In Bytes:\s*512`).MatchString(out) {
		t.Fatalf("iscsi-readcapacity16:\n%s", out)
	}
}

// Acceptance 2: 256 MiB of random data written with qemu-img and read back
// is identical, without and with header digests.
func TestQemuImgRoundTrip(t *testing.T) {
	requireTool(t, "qemu-img")
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "copy", "--size", "512MiB")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	buf := make([]byte, 256<<20)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	// QEMU takes the header digest as a driver option (its URL parser
	// does not accept libiscsi's ?header_digest= argument).
	opts := func(digest string) string {
		return fmt.Sprintf("driver=iscsi,transport=tcp,portal=%s,target=iqn.2026-11.io.tandem:copy,lun=0,header-digest=%s", n.portal, digest)
	}
	for _, tc := range []struct{ name, digest, logWant string }{
		{"no digest", "none", "header_digest=false"},
		{"header digest", "crc32c", "header_digest=true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := run(t, 3*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", src, "--target-image-opts", opts(tc.digest)); err != nil {
				t.Fatal(err)
			}
			back := filepath.Join(dir, "back.img")
			os.Remove(back)
			if _, err := run(t, 3*time.Minute, "qemu-img", "convert", "--image-opts", opts(tc.digest), "-O", "raw", back); err != nil {
				t.Fatal(err)
			}
			if _, err := run(t, time.Minute, "cmp", "-n", fmt.Sprint(len(buf)), src, back); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(n.log.String(), tc.logWant) {
				t.Fatalf("node log has no login with %s:\n%s", tc.logWant, n.log)
			}
		})
	}
}

// Acceptance 4: CHAP one-way and mutual, and the initiator allow list.
func TestCHAPAndAllowList(t *testing.T) {
	requireTool(t, "iscsi-inq")
	n := startNode(t, t.TempDir())
	const user, secret = "alice", "secret-of-alice-12"
	const muser, msecret = "tandem", "secret-of-target-34"
	n.mustCLI("volume", "create", "chap", "--size", "64MiB", "--chap-user", user, "--chap-secret", secret)
	n.mustCLI("volume", "create", "mutual", "--size", "64MiB", "--chap-user", user, "--chap-secret", secret,
		"--mutual-user", muser, "--mutual-secret", msecret)
	n.mustCLI("volume", "create", "acl", "--size", "64MiB", "--allow", "iqn.2026-11.io.example:allowed")
	with := func(vol, cred, query string) string {
		u := n.url(vol)
		return strings.Replace(u, "iscsi://", "iscsi://"+cred, 1) + query
	}
	cases := []struct {
		name string
		args []string
		ok   bool
	}{
		{"1 right secret", []string{with("chap", user+"%"+secret+"@", "")}, true},
		{"2 wrong secret", []string{with("chap", user+"%wrong-secret-000@", "")}, false},
		{"3 no secret", []string{n.url("chap")}, false},
		{"4 wrong user", []string{with("chap", "mallory%"+secret+"@", "")}, false},
		{"5 mutual right", []string{with("mutual", user+"%"+secret+"@", "?target_user="+muser+"&target_password="+msecret)}, true},
		{"6 mutual target secret wrong", []string{with("mutual", user+"%"+secret+"@", "?target_user="+muser+"&target_password=not-the-target-1")}, false},
		{"7 mutual asked where not configured", []string{with("chap", user+"%"+secret+"@", "?target_user="+muser+"&target_password="+msecret)}, false},
		{"8 allowed initiator", []string{"-i", "iqn.2026-11.io.example:allowed", n.url("acl")}, true},
		{"9 other initiator", []string{"-i", "iqn.2026-11.io.example:other", n.url("acl")}, false},
	}
	for _, tc := range cases {
		out, err := run(t, 30*time.Second, "iscsi-inq", tc.args...)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err=%v want ok=%v\n%s", tc.name, err, tc.ok, out)
		}
		if !tc.ok && !regexp.MustCompile(`(?i)auth|login|fail|denied|not allowed`).MatchString(out) {
			t.Errorf("%s: refusal does not say why:\n%s", tc.name, out)
		}
	}
	// The refusals are logged with the status the initiator got.
	if !strings.Contains(n.log.String(), "login failed") {
		t.Errorf("node log has no login failure:\n%s", n.log)
	}
}

// libiscsi's whole compliance suite, test by test, destructive tests
// allowed, with a second URL to the volume for the multipath tests: no
// FAIL, HANG or NOCONN apart from two tests that are wrong in libiscsi 1.19
// itself (matched narrowly below), and every SKIP is an optional feature
// docs/scsi.md lists as not implemented. The node must stay up throughout.
func TestConformance(t *testing.T) {
	requireTool(t, "iscsi-test-cu")
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "conf", "--size", "256MiB")
	list, err := run(t, 30*time.Second, "iscsi-test-cu", "-l")
	if err != nil {
		t.Fatal(err)
	}
	var tests []string
	for _, l := range strings.Split(list, "\n") {
		l = strings.TrimSpace(l)
		if regexp.MustCompile(`^ALL\.[^.]+\.[^.]+$`).MatchString(l) {
			tests = append(tests, l)
		}
	}
	if len(tests) < 200 {
		t.Fatalf("only %d tests listed:\n%s", len(tests), list)
	}
	// Skips we accept: each is an optional command or a device property
	// docs/scsi.md explains.
	allowedSkips := regexp.MustCompile(`ORWRITE is not implemented|WRITEATOMIC16 is not implemented|` +
		`--allow-sanitize flag is not set|READDEFECTDATA1[02] is not implemented|` +
		`Logical unit is not removable|Media is not removable|Logical unit is not write-protected|` +
		`WRITESAME1[06] does not support 0-blocks`)
	counts := map[string]int{}
	url := n.url("conf")
	const lunReset, unmapSingle = "ALL.iSCSITMF.LUNResetSimpleAsync", "ALL.GetLBAStatus.UnmapSingle"
	for _, name := range tests {
		timeout := 90 * time.Second
		if name == lunReset {
			timeout = 20 * time.Second // its client can hang after corrupting its heap
		}
		args := []string{"-d", "-n", "--test=" + name, url, url}
		if name == lunReset || name == unmapSingle {
			args = append([]string{"-V"}, args...) // the step log their matchers read
		}
		out, err := run(t, timeout, "iscsi-test-cu", args...)
		res := classify(out, err)
		switch {
		case res != "PASS" && res != "SKIP" && name == lunReset && libiscsiLUNResetBug(out, err):
			// The LUN reset itself is checked by target/iscsi's tests
			// and MultipathIO.Reset.
			t.Logf("%s: %s, libiscsi 1.19's known defect", name, res)
			res = "KNOWN"
		case res == "FAIL" && name == unmapSingle && libiscsiLBAStatusBug(out):
			// Tandem reports 4 KiB physical blocks (8 logical per
			// physical). What the test left: LBAs 0-7 unmapped, 8-263
			// mapped; the first descriptor for LBA 9 must start at 9.
			s := n.session(t, "conf", "iqn.2026-11.test:lba-status", 1)
			if start, status := firstLBAStatus(t, s, 9); start != 9 || status != 0 {
				t.Errorf("%s: GET LBA STATUS of LBA 9: first descriptor starts at %d with status %d, want 9, mapped (0)", name, start, status)
			}
			s.Close()
			t.Logf("%s: %s, libiscsi 1.19's known defect", name, res)
			res = "KNOWN"
		case res == "SKIP":
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, "[SKIPPED]") && !allowedSkips.MatchString(l) {
					t.Errorf("%s: skipped for a reason docs/scsi.md does not give: %s", name, strings.TrimSpace(l))
				}
			}
		case res != "PASS":
			t.Errorf("%s: %s\n%s", name, res, tail(out, 40))
		}
		counts[res]++
		select {
		case err := <-n.waited:
			t.Fatalf("the node exited during %s: %v\n%s", name, err, tail(n.log.String(), 40))
		default:
		}
	}
	t.Logf("conformance: pass=%d skip=%d known-libiscsi-bugs=%d fail=%d hang=%d noconn=%d total=%d",
		counts["PASS"], counts["SKIP"], counts["KNOWN"], counts["FAIL"], counts["HANG"], counts["NOCONN"], len(tests))
}

// libiscsi 1.19's GetLBAStatus.UnmapSingle has two loops that end in the
// same CU_FAIL, at line 85 (first loop) and line 135 (second loop). Only the
// second is wrong: it unmaps i blocks at LBA 0, asks for the status of LBA
// i+1 and wants the first descriptor to start at i+lbppb (logical blocks per
// physical block), where SBC-3 starts it at the requested LBA. With lbppb > 1
// that fails on the loop's first round, i = lbppb; a later round failing
// would mean an earlier one passed, so the node did not start at the
// requested LBA. With -V the test logs each step; these lines tell the loops
// and rounds apart.
const (
	lbaStatusSecondLoopFail = `test_get_lba_status_unmap_single.c:135  - CU_FAIL("[FAILED] GETLBASTATUS command: " "lba offset in first descriptor does not " "match request.")`
	lbaStatusSecondLoop     = "Test GETLBASTATUS for a single range of 1-255 blocks at offset 0"
)

var (
	lbaStatusLBPPB = regexp.MustCompile(`(?m)^\s+We have (\d+) logical blocks per physical block$`)
	lbaStatusUnmap = regexp.MustCompile(`(?m)^\s+Unmap (\d+) blocks at LBA 0$`)
	lbaStatusRead  = regexp.MustCompile(`(?m)^\s+Read the status of the block at LBA:(\d+)$`)
	oneTestFailed  = regexp.MustCompile(`(?m)^\s+tests\s+1\s+1\s+0\s+1\s+0\s*$`)
	oneAssertFail  = regexp.MustCompile(`(?m)^\s+asserts\s+(\d+)\s+(\d+)\s+\d+\s+1\s+n/a\s*$`)
)

// libiscsiLBAStatusBug reports whether the -V output of UnmapSingle shows
// exactly the second loop's defect: one failed assertion, the line-135
// check, after the second loop's first round (unmap lbppb blocks, read LBA
// 0 and LBA lbppb+1) and nothing later.
func libiscsiLBAStatusBug(out string) bool {
	if strings.Count(out, "test_get_lba_status_unmap_single.c:") != 1 || !strings.Contains(out, lbaStatusSecondLoopFail) ||
		!oneTestFailed.MatchString(out) || !oneAssertFail.MatchString(out) {
		return false
	}
	m := lbaStatusLBPPB.FindStringSubmatch(out)
	loop := strings.Index(out, lbaStatusSecondLoop)
	fail := strings.Index(out, lbaStatusSecondLoopFail)
	if m == nil || m[1] == "1" || loop < 0 || fail < loop {
		return false
	}
	round := out[loop:fail]
	var unmapped, read []string
	for _, u := range lbaStatusUnmap.FindAllStringSubmatch(round, -1) {
		unmapped = append(unmapped, u[1])
	}
	for _, r := range lbaStatusRead.FindAllStringSubmatch(round, -1) {
		read = append(read, r[1])
	}
	lbppb, _ := strconv.Atoi(m[1])
	return slices.Equal(unmapped, []string{m[1]}) && slices.Equal(read, []string{"0", strconv.Itoa(lbppb + 1)})
}

// LUNResetSimpleAsync in libiscsi 1.19 asserts reconnect_succeeded==1 at
// line 157, right after queueing the TMF and before any response can
// arrive, so it fails against every target (tgtd too). Its cleanup then
// frees the WRITE task before iscsi_logout_sync reads the WRITE's response
// into it (valgrind: "Invalid write ... inside a block ... free'd", against
// tgtd as well), so in about half the runs glibc reports the corrupted heap
// and aborts, before CUnit's summary; once in a while the abort itself hangs.
const lunResetAssert = "test_async_lu_reset_simple.c:157  - CU_ASSERT_EQUAL(reconnect_succeeded,1)"

var (
	// glibcHeapReport matches glibc's report of a corrupted heap, printed
	// just before it calls abort().
	glibcHeapReport = regexp.MustCompile(`malloc\(\): [a-z ]*corrupted|double free or corruption|free\(\): invalid`)
	cunitSummary    = regexp.MustCompile(`(?m)^\s+tests\s+`)
)

// libiscsiLUNResetBug reports whether the only failed assertion is line 157's
// and the run then ended in one of the defect's known ways: the summary with
// that one failure and a normal exit; or glibc's heap-corruption report after
// the assertion and then SIGABRT, or a hang. A crash or hang without
// glibc's report, a SIGSEGV, or a report without the assertion before it is
// something else.
func libiscsiLUNResetBug(out string, err error) bool {
	if strings.Count(out, "test_async_lu_reset_simple.c:") != 1 || !strings.Contains(out, lunResetAssert) {
		return false
	}
	timedOut := err != nil && strings.Contains(err.Error(), "timed out")
	var exit *exec.ExitError
	ws, signaled := syscall.WaitStatus(0), false
	if errors.As(err, &exit) {
		ws, _ = exit.Sys().(syscall.WaitStatus)
		signaled = ws.Signaled()
	}
	if cunitSummary.MatchString(out) {
		return oneTestFailed.MatchString(out) && oneAssertFail.MatchString(out) && !timedOut && !signaled
	}
	after := out[strings.Index(out, lunResetAssert)+len(lunResetAssert):]
	if !glibcHeapReport.MatchString(after) {
		return false
	}
	return timedOut || signaled && ws.Signal() == syscall.SIGABRT
}

// firstLBAStatus sends GET LBA STATUS (16) for lba and returns the first
// descriptor's starting LBA and provisioning status.
func firstLBAStatus(t *testing.T, s *initiator.Session, lba uint64) (uint64, byte) {
	t.Helper()
	cdb := make([]byte, 16)
	cdb[0], cdb[1] = 0x9e, 0x12
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], 24)
	r := mustDo(t, s, "GET LBA STATUS", cdb, nil, 24, statusGood)
	if len(r.Data) < 24 {
		t.Fatalf("GET LBA STATUS of LBA %d: %d bytes, want a descriptor", lba, len(r.Data))
	}
	return binary.BigEndian.Uint64(r.Data[8:]), r.Data[20] & 0x0f
}

// classify reads iscsi-test-cu's CUnit summary like ../shared/tools/iscsi-conformance.
func classify(out string, err error) string {
	m := regexp.MustCompile(`(?m)^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)`).FindStringSubmatch(out)
	switch {
	case m == nil && err != nil && strings.Contains(err.Error(), "timed out"):
		return "HANG"
	case m == nil:
		return "NOCONN"
	case m[4] != "0":
		return "FAIL"
	case strings.Contains(out, "[SKIPPED]"):
		return "SKIP"
	}
	return "PASS"
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// A deleted volume stops being served: its sessions are closed and it is
// no longer discovered.
func TestDeleteClosesSessions(t *testing.T) {
	requireTool(t, "qemu-io", "iscsi-ls")
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "gone", "--size", "64MiB")
	// qemu-io holds a session open while it sleeps.
	ctx, cancel := context.WithCancel(context.Background())
	qio := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "sleep 60000", n.url("gone"))
	if err := qio.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	defer func() { cancel(); qio.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		v := n.volumeJSON("gone")
		if s, _ := v["sessions"].([]any); len(s) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session shown: %v", v)
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.mustCLI("volume", "delete", "gone")
	if !strings.Contains(n.log.String(), "session closed: target removed") {
		t.Fatalf("the session was not closed by the delete:\n%s", n.log)
	}
	if out, err := n.cli("volume", "show", "gone"); err == nil || !strings.Contains(out, "not found") {
		t.Fatalf("volume still shown after delete: %v\n%s", err, out)
	}
	out, _ := run(t, 30*time.Second, "iscsi-ls", "-s", "iscsi://"+n.portal)
	if strings.Contains(out, ":gone") {
		t.Fatalf("deleted target still discovered:\n%s", out)
	}
	// The initiator's attempts to log in again are refused: target not found.
	time.Sleep(2 * time.Second)
	if !strings.Contains(n.log.String(), "status 2/03") {
		t.Logf("no refused re-login seen yet:\n%s", n.log)
	}
}

// kill -9 while writes are in flight, then restart: the catalog is intact,
// every write that was flushed reads back, and every sector the interrupted
// writes covered holds either its old content (zeros) or the new one.
// "In flight" is checked, not hoped for: the node is killed once it has put
// part of the interrupted writes on disk (the volume's allocated bytes grow)
// while qemu-io is still waiting for them.
func TestKill9KeepsFlushedWrites(t *testing.T) {
	requireTool(t, "qemu-io")
	data := t.TempDir()
	n := startNode(t, data)
	n.mustCLI("volume", "create", "crash", "--size", "512MiB")
	n.mustCLI("volume", "create", "other", "--size", "64MiB")
	type rec struct {
		off     int
		pattern int
	}
	var flushed []rec
	const mib = 1 << 20
	for round := 0; round < 4; round++ {
		// Acknowledged and flushed: qemu-io exits 0 only after the flush.
		for i := 0; i < 4; i++ {
			off := ((round*4 + i) * 3) * mib
			p := 0x10 + round*4 + i
			if _, err := run(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %d %d 1M", p, off), "-c", "flush", n.url("crash")); err != nil {
				t.Fatal(err)
			}
			flushed = append(flushed, rec{off, p})
		}
		// Unflushed writes in flight while the node dies: 16 of 4 MiB at
		// once into a 64 MiB region of this round's own, a hole so far.
		base, p := (128+round*64)*mib, 0xe0+round
		before, err := n.allocatedBytes("crash")
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"-f", "raw"}
		for i := 0; i < 16; i++ {
			args = append(args, "-c", fmt.Sprintf("aio_write -P %d %d 4M", p, base+i*4*mib))
		}
		qio := exec.Command("qemu-io", append(args, "-c", "aio_flush", n.url("crash"))...)
		var qout logBuffer
		qio.Stdout, qio.Stderr = &qout, &qout
		if err := qio.Start(); err != nil {
			t.Fatal(err)
		}
		qdone := make(chan error, 1)
		go func() { qdone <- qio.Wait() }()
		deadline := time.Now().Add(30 * time.Second)
		for {
			select {
			case err := <-qdone:
				t.Fatalf("round %d: qemu-io finished before the kill (%v): the writes were not in flight at it\n%s", round, err, qout.String())
			default:
			}
			if a, err := n.allocatedBytes("crash"); err != nil {
				t.Fatal(err)
			} else if a >= before+mib {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: none of the 64 MiB reached the volume in 30 s\n%s", round, qout.String())
			}
			time.Sleep(time.Millisecond)
		}
		n.kill()
		select {
		case err := <-qdone:
			if err == nil { // its flush was answered: the node was still up after the last poll
				t.Fatalf("round %d: qemu-io finished its writes and flush before the kill: the writes were not in flight at it\n%s", round, qout.String())
			}
		default:
			// libiscsi reconnects: it must not carry the writes to the
			// restarted node.
			qio.Process.Kill()
			<-qdone
		}
		n.start()
		for _, r := range flushed {
			if _, err := run(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("read -P %d %d 1M", r.pattern, r.off), n.url("crash")); err != nil {
				t.Fatalf("round %d: flushed write at %d lost: %v", round, r.off, err)
			}
		}
		list := n.mustCLI("volume", "list")
		if !strings.Contains(list, "crash") || !strings.Contains(list, "other") {
			t.Fatalf("catalog lost a volume:\n%s", list)
		}
		// Each sector of the interrupted writes: old or new, never torn.
		s := n.session(t, "crash", "iqn.2026-11.test:verify", 1)
		newSectors := 0
		for off := base; off < base+64*mib; off += mib {
			lba := uint32(off / 512)
			r := mustDo(t, s, "read", []byte{0x28, 0, byte(lba >> 24), byte(lba >> 16), byte(lba >> 8), byte(lba), 0, 0x08, 0, 0}, nil, mib, statusGood)
			for sec := 0; sec < mib/512; sec++ {
				b := r.Data[sec*512 : (sec+1)*512]
				switch {
				case bytes.Equal(b, make([]byte, 512)):
				case bytes.Equal(b, bytes.Repeat([]byte{byte(p)}, 512)):
					newSectors++
				default:
					t.Fatalf("round %d: sector at byte %d of an interrupted write holds neither zeros nor %#x: % x...", round, off+sec*512, p, b[:16])
				}
			}
		}
		s.Close()
		if newSectors == 0 {
			t.Errorf("round %d: none of the interrupted writes' sectors is new, though the node had allocated space for them", round)
		}
		t.Logf("round %d: killed with writes in flight; %d of %d sectors they covered hold the new data", round, newSectors, 64*mib/512)
	}
}

// SIGTERM: clean exit, and data written before it is there after restart.
func TestSigtermShutdownIsClean(t *testing.T) {
	requireTool(t, "qemu-io")
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "v", "--size", "64MiB")
	if _, err := run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4M", n.url("v")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n.stop()
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if !strings.Contains(n.log.String(), "tandem node stopped") {
		t.Errorf("no clean stop in the node log:\n%s", n.log)
	}
	if !strings.Contains(n.log.String(), "iscsi logout") && !strings.Contains(n.log.String(), "logged out") {
		t.Logf("node log:\n%s", n.log)
	}
	n.start()
	if _, err := run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 4M", n.url("v")); err != nil {
		t.Fatal(err)
	}
}

// libiscsiOutput reads a real iscsi-test-cu -V output, captured against
// Tandem with libiscsi 1.19.
func libiscsiOutput(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "libiscsi-1.19", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// replaceOnce replaces old, which must occur in s, once.
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("%q is not in the captured output", old)
	}
	return strings.Replace(s, old, new, 1)
}

// The exemption for libiscsi's GetLBAStatus.UnmapSingle accepts only the
// second loop's check failing on its first round.
func TestLibiscsiLBAStatusBugMatcher(t *testing.T) {
	real := libiscsiOutput(t, "GetLBAStatus.UnmapSingle.txt")
	firstLoopFail := strings.Replace(lbaStatusSecondLoopFail, ".c:135 ", ".c:85 ", 1)
	loop := strings.Index(real, lbaStatusSecondLoop)
	failures := strings.Index(real, "Suite GetLBAStatus, Test UnmapSingle had failures:")
	if loop < 0 || failures < loop {
		t.Fatal("the captured output does not have the second loop and the failure report")
	}
	// The first loop failing on its first round: the step log stops after
	// it read LBA 8, and the report names line 85.
	firstRound := "Read the status of the block at LBA:8\n    Send GET_LBA_STATUS (Expecting SUCCESS) LBA:8 alloc_len:24\n" +
		"    [OK] GET_LBA_STATUS returned SUCCESS NO SENSE(0x00) (null)(0x0000)\n\n"
	firstLoop := real[:strings.Index(real, "Read the status of the block at LBA:8\n")] + firstRound +
		strings.Replace(real[failures:], lbaStatusSecondLoopFail, firstLoopFail, 1)
	// The second loop's second round (i=16), had the first passed.
	secondRound := "    Write the first 264 blocks with a known pattern and thus map the blocks\n" +
		"    Unmap 16 blocks at LBA 0\n    Read the status of the block at LBA:0\n    Read the status of the block at LBA:17\n\n"
	laterRound := real[:failures] + secondRound + real[failures:]
	for _, c := range []struct {
		name string
		out  string
		want bool
	}{
		{"1 the second loop's check, first round", real, true},
		{"2 the first loop's identical check", firstLoop, false},
		{"3 line 85 reported after the second loop's steps", replaceOnce(t, real, lbaStatusSecondLoopFail, firstLoopFail), false},
		{"4 the second loop's check, second round", laterRound, false},
		{"5 the second loop's other check (not mapped)", replaceOnce(t, real, lbaStatusSecondLoopFail,
			`test_get_lba_status_unmap_single.c:142  - CU_FAIL("[FAILED] LBA should be mapped but isn't")`), false},
		{"6 both loops' checks", replaceOnce(t, replaceOnce(t, real, "asserts    102    102    101      1", "asserts    102    102    100      2"),
			lbaStatusSecondLoopFail, lbaStatusSecondLoopFail+"\n    2. "+firstLoopFail), false},
		{"7 two failed asserts in the summary", replaceOnce(t, real, "101      1", "100      2"), false},
		{"8 without the -V step log", real[:strings.Index(real, "    Test GETLBASTATUS")] + real[failures:], false},
		{"9 one logical block per physical block", replaceOnce(t, real, "We have 8 logical", "We have 1 logical"), false},
		{"10 no summary", real[:strings.Index(real, "Run Summary")], false},
	} {
		if got := libiscsiLBAStatusBug(c.out); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

// The exemption for libiscsi's LUNResetSimpleAsync accepts exactly its
// known outcomes: the line-157 assertion and then either CUnit's summary
// with that one failure, or glibc's heap-corruption report and SIGABRT (or
// a hang). A bare crash is refused.
func TestLibiscsiLUNResetBugMatcher(t *testing.T) {
	finished := libiscsiOutput(t, "LUNResetSimpleAsync.summary.txt")
	aborted := libiscsiOutput(t, "LUNResetSimpleAsync.abort.txt")
	const report = "malloc(): smallbin double linked list corrupted"
	bare := replaceOnce(t, aborted, report, "")
	died := func(sig string) error {
		_, err := run(t, 10*time.Second, "sh", "-c", "kill -"+sig+" $$")
		return err
	}
	timedOut := fmt.Errorf("iscsi-test-cu timed out after 20s: ...")
	exited := func() error {
		_, err := run(t, 10*time.Second, "sh", "-c", "exit 1")
		return err
	}
	noAssertion := func(out string) string { return replaceOnce(t, out, "1. "+lunResetAssert, "") }
	for _, c := range []struct {
		name string
		out  string
		err  error
		want bool
	}{
		{"1 finished with the one assertion", finished, exited(), true},
		{"2 heap report after the assertion, SIGABRT", aborted, died("ABRT"), true},
		{"3 heap report after the assertion, then hung", aborted, timedOut, true},
		{"4 bare SIGABRT after the assertion", bare, died("ABRT"), false},
		{"5 bare SIGSEGV after the assertion", bare, died("SEGV"), false},
		{"6 SIGSEGV with the heap report", aborted, died("SEGV"), false},
		{"7 heap report, SIGABRT, no assertion", noAssertion(aborted), died("ABRT"), false},
		{"8 bare SIGABRT without the assertion", noAssertion(bare), died("ABRT"), false},
		{"9 bare SIGSEGV without the assertion", noAssertion(bare), died("SEGV"), false},
		{"10 heap report before the assertion", replaceOnce(t, bare, "Suite iSCSITMF", report+"\nSuite iSCSITMF"), died("ABRT"), false},
		{"11 a second failed assertion", replaceOnce(t, finished, lunResetAssert, lunResetAssert+"\n    2. test_async_lu_reset_simple.c:196  - CU_ASSERT_EQUAL(state.wr_cancelled,0)"), exited(), false},
		{"12 two failed asserts in the summary", replaceOnce(t, finished, "7      1", "6      2"), exited(), false},
		{"13 summary, then killed by a signal", finished, died("SEGV"), false},
		{"14 no summary, exited normally", bare, exited(), false},
		{"15 heap report, then SIGKILL", aborted, died("KILL"), false},
		{"16 hung without the heap report", bare, timedOut, false},
		{"17 the summary without the assertion", noAssertion(finished), exited(), false},
	} {
		if got := libiscsiLUNResetBug(c.out, c.err); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}
