package tests

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
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
	for _, name := range tests {
		timeout := 90 * time.Second
		if name == "ALL.iSCSITMF.LUNResetSimpleAsync" {
			timeout = 20 * time.Second // its client can hang after corrupting its heap
		}
		out, err := run(t, timeout, "iscsi-test-cu", "-d", "-n", "--test="+name, url, url)
		res := classify(out, err)
		switch {
		case res != "PASS" && res != "SKIP" && name == "ALL.iSCSITMF.LUNResetSimpleAsync" && libiscsiLUNResetBug(out, err):
			// libiscsi 1.19 asserts reconnect_succeeded==1 right after
			// queueing the TMF, before any response can arrive, so this
			// test fails against every target (tgtd too). Its cleanup then
			// frees the WRITE task before iscsi_logout_sync reads the
			// WRITE's response into it (valgrind: "Invalid write ... inside
			// a block ... free'd", against tgtd as well), so the client
			// aborts with heap corruption in about a third of the runs and
			// prints no summary (once in a while the abort itself hangs). The LUN reset itself is checked by
			// target/iscsi's tests and MultipathIO.Reset.
			res = "KNOWN"
		case res == "FAIL" && name == "ALL.GetLBAStatus.UnmapSingle" && libiscsiLBAStatusBug(out):
			// The test's second loop asks for LBA i+1 and wants the
			// descriptor to start at i+(logical blocks per physical
			// block): right only when that is 1. Tandem reports 4 KiB
			// physical blocks (8 per physical) and starts the first
			// descriptor at the requested LBA, as SBC-3 says.
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

// libiscsiLBAStatusBug reports whether the only failure is the descriptor
// start check of the test's second loop.
func libiscsiLBAStatusBug(out string) bool {
	return strings.Count(out, "test_get_lba_status_unmap_single.c:") == 1 &&
		strings.Contains(out, "lba offset in first descriptor does not") &&
		regexp.MustCompile(`(?m)^\s+asserts\s+\d+\s+\d+\s+\d+\s+1\s`).MatchString(out)
}

// libiscsiLUNResetBug reports whether the only failed assertion is the one
// the test makes before the TMF response can have arrived, and the test
// either finished with that one failure or its process then died of a
// signal (the use-after-free in its cleanup) rather than exiting.
func libiscsiLUNResetBug(out string, err error) bool {
	if strings.Count(out, "test_async_lu_reset_simple.c:") != 1 ||
		!strings.Contains(out, "test_async_lu_reset_simple.c:157  - CU_ASSERT_EQUAL(reconnect_succeeded,1)") {
		return false
	}
	if regexp.MustCompile(`(?m)^\s+tests\s+`).MatchString(out) {
		return regexp.MustCompile(`(?m)^\s+asserts\s+\d+\s+\d+\s+\d+\s+1\s`).MatchString(out)
	}
	// glibc's report of the corrupted heap; abort() after it has also
	// been seen to hang (the tool then reports HANG).
	if err != nil && strings.Contains(err.Error(), "timed out") {
		return regexp.MustCompile(`malloc\(\): [a-z ]*corrupted|double free or corruption|free\(\): invalid`).MatchString(out)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return false
	}
	ws, ok := exit.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && (ws.Signal() == syscall.SIGABRT || ws.Signal() == syscall.SIGSEGV)
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
	defer cancel()
	qio := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "sleep 60000", n.url("gone"))
	if err := qio.Start(); err != nil {
		t.Fatal(err)
	}
	defer qio.Wait()
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

// kill -9 during writes, then restart: the catalog is intact and every
// write that was flushed reads back.
func TestKill9KeepsFlushedWrites(t *testing.T) {
	requireTool(t, "qemu-io")
	data := t.TempDir()
	n := startNode(t, data)
	n.mustCLI("volume", "create", "crash", "--size", "256MiB")
	n.mustCLI("volume", "create", "other", "--size", "64MiB")
	type rec struct {
		off     int
		pattern int
	}
	var flushed []rec
	for round := 0; round < 4; round++ {
		// Acknowledged and flushed: qemu-io exits 0 only after the flush.
		for i := 0; i < 4; i++ {
			off := ((round*4 + i) * 3) << 20
			p := 0x10 + round*4 + i
			if _, err := run(t, time.Minute, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %d %d 1M", p, off), "-c", "flush", n.url("crash")); err != nil {
				t.Fatal(err)
			}
			flushed = append(flushed, rec{off, p})
		}
		// Unflushed writes in flight while the node dies.
		go run(t, 10*time.Second, "qemu-io", "-f", "raw", "-c", "aio_write -P 0xee 200M 8M", "-c", "aio_flush", n.url("crash"))
		time.Sleep(time.Duration(50+round*40) * time.Millisecond)
		n.kill()
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

// The exemption for libiscsi's LUNResetSimpleAsync accepts exactly its two
// known outcomes and nothing else.
func TestLibiscsiLUNResetBugMatcher(t *testing.T) {
	const assert157 = "    1. test_async_lu_reset_simple.c:157  - CU_ASSERT_EQUAL(reconnect_succeeded,1)"
	const summary = "\n               tests      1      1      0      1        0\n             asserts      9      9      8      1      n/a\n"
	died := func(sig string) error {
		_, err := run(t, 10*time.Second, "sh", "-c", "kill -"+sig+" $$")
		return err
	}
	timedOut := fmt.Errorf("iscsi-test-cu timed out after 20s: ...")
	exited := func() error {
		_, err := run(t, 10*time.Second, "sh", "-c", "exit 1")
		return err
	}
	for _, c := range []struct {
		name string
		out  string
		err  error
		want bool
	}{
		{"finished with the one assertion", assert157 + summary, exited(), true},
		{"aborted after the assertion", assert157 + "malloc(): smallbin double linked list corrupted\n", died("ABRT"), true},
		{"segfault after the assertion", assert157 + "\n", died("SEGV"), true},
		{"second failed assertion", assert157 + "\n    2. test_async_lu_reset_simple.c:200  - x" + summary, exited(), false},
		{"two failed asserts in the summary", assert157 + strings.Replace(summary, "8      1", "7      2", 1), exited(), false},
		{"no summary, exited normally", assert157 + "\n", exited(), false},
		{"no summary, killed", assert157 + "\n", died("KILL"), false},
		{"crash without the assertion", "malloc(): corrupted\n", died("ABRT"), false},
		{"hung after corrupting its heap", assert157 + "malloc(): smallbin double linked list corrupted", timedOut, true},
		{"hung without a heap report", assert157 + "\n", timedOut, false},
		{"hung before the assertion", "malloc(): smallbin double linked list corrupted", timedOut, false},
	} {
		if got := libiscsiLUNResetBug(c.out, c.err); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}
