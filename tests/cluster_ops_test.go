package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/replication"
	"tandem.io/tandem/replication/link"
	"tandem.io/tandem/target/iscsi/initiator"
)

// Issue 9's acceptance for the admin operations and the data path on real
// processes, and what the issue leaves unsaid: every SCSI command that
// changes data keeps the copies identical, verify finds a difference and
// says where, node remove, a standalone node (or a pre-cluster data
// directory) keeps its volumes, /metrics, fencing of an old epoch by a
// real replica, and links without encryption.

var twoDataNodes = topology{"two data nodes", 2, false}

// replicaOf is a node holding a copy of v that is not its primary.
func (c *testCluster) replicaOf(v admin.Volume) *node {
	c.t.Helper()
	for _, cp := range v.Copies {
		if cp.Node != v.Primary {
			return c.node(cp.Node)
		}
	}
	c.t.Fatalf("volume %s has no replica: %+v", v.Name, v.Copies)
	return nil
}

// verifyIdentical runs `tandem volume verify` through n and fails the test
// unless it reports every copy identical.
func verifyIdentical(t *testing.T, n *node, vol, when string) string {
	t.Helper()
	out, err := n.cli("volume", "verify", vol)
	if err != nil || !strings.Contains(out, "identical") {
		t.Fatalf("%s: tandem volume verify %s: %v\n%s", when, vol, err, out)
	}
	return strings.TrimSpace(out)
}

// readBlock reads the 4 KiB block of a session's LUN.
func readBlock(t *testing.T, s *initiator.Session, block int64) []byte {
	t.Helper()
	if r, err := s.Do(read16(uint64(block)*8, 8), nil, 4096); err == nil && r.Status == statusGood {
		return r.Data
	}
	// After a unit attention (see writeBlock), once more.
	return mustDo(t, s, fmt.Sprintf("READ block %d", block), read16(uint64(block)*8, 8), nil, 4096, statusGood).Data
}

// writeBlock writes the 4 KiB block of a session's LUN.
func writeBlock(t *testing.T, s *initiator.Session, block int64, data []byte) {
	t.Helper()
	// A unit attention (ASYMMETRIC ACCESS STATE CHANGED when another
	// node's copy comes or goes) runs nothing: initiators send again.
	for range 3 {
		r, err := s.Do(write16(uint64(block)*8, 8), data, 0)
		if k, _ := r.SenseKey(); err == nil && r.Status == statusCheckCondition && k == 6 {
			continue
		}
		if err != nil || r.Status != statusGood {
			k, a := r.SenseKey()
			t.Fatalf("WRITE block %d: %v status %#x (sense %x/%04x), want %#x", block, err, r.Status, k, a, statusGood)
		}
		return
	}
	t.Fatalf("WRITE block %d: unit attentions do not clear", block)
}

// localCopy is the volume as n's own copy shows it (allocation of n's
// layers), without asking the primary.
func localCopy(t *testing.T, n *node, vol string) admin.Volume {
	t.Helper()
	c := n.client()
	c.LocalOnly = true
	v, err := c.GetVolume(context.Background(), vol)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// cuResult is one test of an iscsi-test-cu run.
type cuResult struct {
	name   string // FAMILY.Suite.Test
	result string // PASS, SKIP, FAIL, or CRASH (no verdict printed)
	detail string // the test's output
}

var cuTestLine = regexp.MustCompile(`(?m)^  Test: (\S+) \.\.\.`)

// cuResults reads the per-test verdicts of a verbose iscsi-test-cu run of
// one family ("Suite: X", then "  Test: Y ...passed|FAILED").
func cuResults(family, out string) []cuResult {
	var res []cuResult
	idx := cuTestLine.FindAllStringSubmatchIndex(out, -1)
	for i, m := range idx {
		end := len(out)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		chunk := out[m[1]:end]
		if k := strings.Index(chunk, "Run Summary"); k >= 0 {
			chunk = chunk[:k]
		}
		r := cuResult{name: family + "." + out[m[2]:m[3]], detail: strings.TrimSpace(chunk)}
		switch {
		case strings.Contains(chunk, "FAILED"):
			r.result = "FAIL"
		case strings.Contains(chunk, "[SKIPPED]"):
			r.result = "SKIP"
		case strings.Contains(chunk, "passed"):
			r.result = "PASS"
		default:
			r.result = "CRASH"
		}
		res = append(res, r)
	}
	return res
}

// Optional features docs/scsi.md lists as not implemented, and a
// property of the device: the skips the write families may report.
var clusterAllowedSkips = regexp.MustCompile(`ORWRITE is not implemented|WRITEATOMIC16 is not implemented|` +
	`WRITESAME1[06] does not support 0-blocks`)

// 1. Every SCSI command that changes data keeps the copies identical: on a
// 2-copy volume, libiscsi's conformance tests of the commands that write
// (run against the primary, family by family, verify after each), then
// our own UNMAP, WRITE SAME with and without UNMAP, COMPARE AND WRITE,
// WRITE AND VERIFY, FUA writes and SYNCHRONIZE CACHE through the Go
// initiator; the replica gives space back as the primary does.
func TestClusterSCSIWritesKeepCopiesIdentical(t *testing.T) {
	requireTool(t, "iscsi-test-cu")
	c := startTestCluster(t, twoDataNodes)
	entry := c.nodes[0]
	entry.mustCLI("volume", "create", "scsi", "--size", "128MiB", "--copies", "2")
	v := c.waitInSync("scsi", time.Minute)
	primary, replica := c.node(v.Primary), c.replicaOf(v)
	url := primary.url("scsi")

	families := []string{"Write10", "Write12", "Write16", "WriteVerify10", "WriteVerify12", "WriteVerify16",
		"WriteSame10", "WriteSame16", "Unmap", "CompareAndWrite", "ExtendedCopy", "OrWrite", "WriteAtomic16"}
	var table strings.Builder
	counts := map[string]int{}
	for _, f := range families {
		out, err := run(t, 2*time.Minute, "iscsi-test-cu", "-d", "--test=ALL."+f, url)
		if res := classify(out, err); res == "HANG" || res == "NOCONN" {
			t.Errorf("iscsi-test-cu ALL.%s: %s\n%s", f, res, tail(out, 40))
			continue
		}
		results := cuResults(f, out)
		if len(results) == 0 {
			t.Errorf("iscsi-test-cu ALL.%s: no test verdicts in its output\n%s", f, tail(out, 40))
		}
		for _, r := range results {
			counts[r.result]++
			fmt.Fprintf(&table, "  %-40s %s\n", r.name, r.result)
			switch {
			case r.result == "SKIP" && !clusterAllowedSkips.MatchString(r.detail):
				t.Errorf("%s skipped for a reason docs/scsi.md does not give:\n%s", r.name, r.detail)
			case r.result == "FAIL" || r.result == "CRASH":
				t.Errorf("%s: %s\n%s", r.name, r.result, r.detail)
			}
		}
		select {
		case err := <-primary.waited:
			t.Fatalf("the primary exited during ALL.%s: %v\n%s", f, err, tail(primary.log.String(), 40))
		default:
		}
		verifyIdentical(t, entry, "scsi", "after iscsi-test-cu ALL."+f)
	}
	t.Logf("iscsi-test-cu against the primary %s, copies verified identical after each family:\n%s"+
		"pass=%d skip=%d fail=%d crash=%d", primary.name, table.String(), counts["PASS"], counts["SKIP"], counts["FAIL"], counts["CRASH"])

	// Our own, through the Go initiator. 512-byte logical blocks; 4 KiB
	// blocks of data are 8 LBAs.
	s := primary.session(t, "scsi", "iqn.2026-11.test:writer", 1)
	defer s.Close()
	const mib = 1 << 20
	const lbasPerMiB = mib / 512
	// 16 MiB of data at 32 MiB, FUA writes of 1 MiB (WRITE 16, FUA bit).
	data := make([]byte, 16*mib)
	rand.Read(data)
	for i := 0; i < 16; i++ {
		cdb := write16(uint64(32+i)*lbasPerMiB, lbasPerMiB)
		cdb[1] |= 0x08 // FUA
		mustDo(t, s, "WRITE 16 FUA", cdb, data[i*mib:(i+1)*mib], 0, statusGood)
	}
	mustDo(t, s, "SYNCHRONIZE CACHE 10", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, statusGood)
	before := localCopy(t, replica, "scsi").AllocatedBytes

	// UNMAP 4 MiB at 34 MiB, in two descriptors (one unaligned to 4 KiB
	// at its start: the partial block is zeroed, not unmapped).
	params := make([]byte, 8+32)
	binary.BigEndian.PutUint16(params[0:], 6+32)
	binary.BigEndian.PutUint16(params[2:], 32)
	binary.BigEndian.PutUint64(params[8:], 34*lbasPerMiB)
	binary.BigEndian.PutUint32(params[16:], 2*lbasPerMiB)
	binary.BigEndian.PutUint64(params[24:], 36*lbasPerMiB+3)
	binary.BigEndian.PutUint32(params[32:], 2*lbasPerMiB-3)
	unmap := []byte{0x42, 0, 0, 0, 0, 0, 0, 0, byte(len(params)), 0}
	mustDo(t, s, "UNMAP", unmap, params, 0, statusGood)
	clear(data[2*mib : 4*mib])
	clear(data[4*mib+3*512 : 6*mib])

	// WRITE SAME 16 with UNMAP (zeros) over 4 MiB at 40 MiB; WRITE SAME 10
	// of a pattern (no UNMAP) over 1 MiB at 44 MiB.
	ws16 := make([]byte, 16)
	ws16[0], ws16[1] = 0x93, 0x08
	binary.BigEndian.PutUint64(ws16[2:], 40*lbasPerMiB)
	binary.BigEndian.PutUint32(ws16[10:], 4*lbasPerMiB)
	mustDo(t, s, "WRITE SAME 16 UNMAP", ws16, make([]byte, 512), 0, statusGood)
	clear(data[8*mib : 12*mib])
	pattern := bytes.Repeat([]byte{0x5a}, 512)
	ws10 := []byte{0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(ws10[2:], 44*lbasPerMiB)
	binary.BigEndian.PutUint16(ws10[7:], lbasPerMiB)
	mustDo(t, s, "WRITE SAME 10", ws10, pattern, 0, statusGood)
	copy(data[12*mib:13*mib], bytes.Repeat(pattern, lbasPerMiB))

	// COMPARE AND WRITE of one block at 45 MiB; WRITE AND VERIFY 16 of 64
	// KiB at 46 MiB; SYNCHRONIZE CACHE 16.
	caw := make([]byte, 16)
	caw[0], caw[13] = 0x89, 1
	binary.BigEndian.PutUint64(caw[2:], 45*lbasPerMiB)
	newBlock := bytes.Repeat([]byte{0xc3}, 512)
	mustDo(t, s, "COMPARE AND WRITE", caw, append(slices.Clone(data[13*mib:13*mib+512]), newBlock...), 0, statusGood)
	copy(data[13*mib:], newBlock)
	wv := make([]byte, 16)
	wv[0] = 0x8e
	binary.BigEndian.PutUint64(wv[2:], 46*lbasPerMiB)
	binary.BigEndian.PutUint32(wv[10:], 128)
	rand.Read(data[14*mib : 14*mib+64<<10])
	mustDo(t, s, "WRITE AND VERIFY 16", wv, data[14*mib:14*mib+64<<10], 0, statusGood)
	sc16 := make([]byte, 16)
	sc16[0] = 0x91
	mustDo(t, s, "SYNCHRONIZE CACHE 16", sc16, nil, 0, statusGood)

	// The primary reads back what the commands should have left.
	for i := 0; i < 16; i++ {
		got := mustDo(t, s, "READ 16", read16(uint64(32+i)*lbasPerMiB, lbasPerMiB), nil, mib, statusGood).Data
		if !bytes.Equal(got, data[i*mib:(i+1)*mib]) {
			t.Fatalf("MiB %d reads back other data than the commands left", 32+i)
		}
	}
	out := verifyIdentical(t, entry, "scsi", "after UNMAP, WRITE SAME, COMPARE AND WRITE, WRITE AND VERIFY")
	t.Logf("after our own commands: %s", out)

	// The replica gave back the space the UNMAP and WRITE SAME with UNMAP
	// freed (4 MiB each, less the partial block), as the primary did.
	after := localCopy(t, replica, "scsi").AllocatedBytes
	pAfter := localCopy(t, primary, "scsi").AllocatedBytes
	t.Logf("replica %s allocated %d bytes before the UNMAPs, %d after; primary %s: %d", replica.name, before, after, primary.name, pAfter)
	if before-after < 7*mib {
		t.Errorf("the replica's copy gave back %d bytes for 8 MiB unmapped: it is not thin where the primary's is", before-after)
	}
	if after != pAfter {
		t.Errorf("the replica's copy holds %d bytes, the primary's %d", after, pAfter)
	}
}

// 2. Verify finds a difference and says where: one 4 KiB block of the
// replica's copy is overwritten behind Tandem's back (in its head layer
// file, where the block lives at its own offset); verify fails and names
// the 1 MiB region holding the block, and only that one; once the block
// is written again through the primary (mirrored), the copies are
// identical again.
func TestClusterVerifyFindsACorruptBlock(t *testing.T) {
	c := startTestCluster(t, twoDataNodes)
	c.nodes[0].mustCLI("volume", "create", "dv", "--size", "64MiB", "--copies", "2")
	v := c.waitInSync("dv", time.Minute)
	primary, replica := c.node(v.Primary), c.replicaOf(v)
	s := primary.session(t, "dv", "iqn.2026-11.test:verify", 1)
	defer s.Close()
	const block = 1283 // 5 MiB + 12 KiB: region 5
	const region = 1 << 20
	for b := int64(block - 4); b <= block+4; b++ {
		writeBlock(t, s, b, stampBlock(b, 1))
	}
	mustDo(t, s, "SYNCHRONIZE CACHE", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, statusGood)
	verifyIdentical(t, replica, "dv", "before the corruption")

	layers, _ := filepath.Glob(filepath.Join(replica.data, "layers", "*.layer"))
	if len(layers) != 1 {
		t.Fatalf("the replica's copy of a volume without snapshots has layer files %v, want one head", layers)
	}
	f, err := os.OpenFile(layers[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := make([]byte, 4096)
	if _, err := f.ReadAt(old, block*4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(old, stampBlock(block, 1)) {
		t.Fatalf("the head layer %s does not hold block %d at offset %d (the test's idea of the layer file is wrong)", layers[0], block, block*4096)
	}
	garbage := make([]byte, 4096)
	rand.Read(garbage)
	if _, err := f.WriteAt(garbage, block*4096); err != nil {
		t.Fatal(err)
	}
	t.Logf("overwrote block %d (offset %d) of %s with random bytes", block, block*4096, layers[0])

	out, err := replica.cli("volume", "verify", "dv")
	t.Logf("$ tandem volume verify dv\n%s", out)
	if err == nil {
		t.Fatalf("verify succeeded with a block of the replica's copy overwritten:\n%s", out)
	}
	want := fmt.Sprintf("volume dv: the copy on %s differs at offset %d (%d bytes)", replica.name, block*4096/region*region, region)
	if !strings.Contains(out, want) {
		t.Fatalf("verify does not say %q:\n%s", want, out)
	}
	if k := strings.Count(out, "differs at offset"); k != 1 {
		t.Fatalf("verify reports %d differing regions, want 1:\n%s", k, out)
	}
	jout, jerr := replica.cli("volume", "verify", "dv", "-o", "json")
	t.Logf("$ tandem volume verify dv -o json (exit: %v)\n%s", jerr, jout)
	if jerr == nil {
		t.Fatal("verify -o json exits 0 although the copies differ")
	}
	var r admin.VerifyResult // the JSON first, then the error on stderr
	if err := json.NewDecoder(strings.NewReader(jout)).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if len(r.Differences) != 1 || r.Differences[0] != (admin.Difference{Node: replica.name, Offset: 5 * region, Length: region}) {
		t.Fatalf("verify -o json: %+v, want one difference on %s at %d", r, replica.name, 5*region)
	}

	// Written again through the primary: mirrored to both copies.
	writeBlock(t, s, block, stampBlock(block, 2))
	out = verifyIdentical(t, replica, "dv", "after the block was written again")
	t.Logf("after the block was written again: %s", out)
	if got := readBlock(t, s, block); !bytes.Equal(got, stampBlock(block, 2)) {
		t.Fatalf("block %d does not read back as written", block)
	}
}

// cliSettled runs the CLI through n, again while the cluster answers
// that it cannot do it now (no leader yet, the leader unreachable), for
// at most a minute; it returns the last output and error.
func cliSettled(n *node, args ...string) (string, error) {
	n.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := n.cli(args...)
		if err == nil || !strings.Contains(out, "unavailable") && !strings.Contains(out, "no leader") || time.Now().After(deadline) {
			return out, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func holds(v admin.Volume, node string) bool {
	return slices.ContainsFunc(v.Copies, func(c admin.Copy) bool { return c.Node == node })
}

func copyState(v admin.Volume, node string) string {
	for _, c := range v.Copies {
		if c.Node == node {
			return c.State
		}
	}
	return ""
}

// 3. `tandem node remove` takes a dead node out: three data nodes, a
// 2-copy volume with its replica on n3, a 3-copy volume whose primary is
// n3, and a 1-copy volume on n3. Removing a live node is refused (stop it
// first); n3 is killed, its copy drops out of sync, the 3-copy volume fails
// over to another node by itself; removing n3 is refused while it is the
// primary of the 1-copy volume, which nothing can take over (move it
// first); once that volume is gone, the removal takes n3 out of the node
// list, the raft configuration and the volume's copies.
func TestClusterNodeRemove(t *testing.T) {
	c := startTestCluster(t, topologies[0])
	n1, n3 := c.node("n1"), c.node("n3")

	// r: its replica on n3.
	var r admin.Volume
	for i := 1; r.Name == ""; i++ {
		name := fmt.Sprintf("r%d", i)
		n1.mustCLI("volume", "create", name, "--size", "32MiB", "--copies", "2")
		if v := c.waitInSync(name, time.Minute); holds(v, "n3") {
			r = v
		} else if i == 3 {
			t.Fatalf("three 2-copy volumes and none placed on n3: %+v", v)
		}
	}
	if r.Primary == "n3" {
		other := c.replicaOf(r)
		n1.mustCLI("volume", "move", r.Name, "--primary", other.name)
		r = c.waitInSync(r.Name, time.Minute)
	}
	// p: served by n3.
	n1.mustCLI("volume", "create", "p", "--size", "32MiB", "--copies", "3")
	if p := c.waitInSync("p", time.Minute); p.Primary != "n3" {
		n1.mustCLI("volume", "move", "p", "--primary", "n3")
	}
	c.waitInSync("p", time.Minute)
	// solo: one copy, on n3.
	solo := ""
	for i := 1; solo == ""; i++ {
		name := fmt.Sprintf("solo%d", i)
		n1.mustCLI("volume", "create", name, "--size", "32MiB", "--copies", "1")
		if v := c.waitInSync(name, time.Minute); v.Primary == "n3" {
			solo = name
		} else if i == 6 {
			t.Fatalf("six 1-copy volumes and none placed on n3: %+v", v)
		}
	}
	t.Logf("volume %s: primary %s, copies %+v; volumes p and %s served by n3\n$ tandem node list\n%s", r.Name, r.Primary, r.Copies, solo, n1.mustCLI("node", "list"))

	// A live node is not removed.
	for _, name := range []string{"n2", "n3"} {
		out, err := n1.cli("node", "remove", name)
		t.Logf("$ tandem node remove %s (alive)\n%s", name, out)
		if err == nil || !strings.Contains(out, "alive") || !strings.Contains(out, "stop it first") {
			t.Fatalf("removing the live node %s: %v, want a refusal saying it is alive and to stop it first\n%s", name, err, out)
		}
	}
	if nodes, err := n1.client().ListNodes(context.Background()); err != nil || len(nodes) != 3 {
		t.Fatalf("after the refused removals: %+v %v", nodes, err)
	}

	// n3 killed; writes to r drop its copy there.
	primary := c.node(r.Primary)
	s := primary.session(t, r.Name, "iqn.2026-11.test:remove", 1)
	defer s.Close()
	writeBlock(t, s, 0, stampBlock(0, 1))
	n3.kill()
	deadline := time.Now().Add(time.Minute)
	for stamp := uint64(2); copyState(c.volume(r.Name), "n3") == "in-sync"; stamp++ {
		if time.Now().After(deadline) {
			t.Fatalf("the copy of %s on the killed n3 is still in sync after a minute: %+v\n%s", r.Name, c.volume(r.Name), c.logs())
		}
		writeBlock(t, s, 1, stampBlock(1, stamp))
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("n3 killed; copy of %s on n3: %s", r.Name, copyState(c.volume(r.Name), "n3"))
	// The gossip takes a few seconds to find n3 dead.
	for state := "alive"; state == "alive"; {
		if time.Now().After(deadline) {
			t.Fatalf("the gossip still sees the killed n3 alive after a minute\n%s", c.logs())
		}
		time.Sleep(200 * time.Millisecond)
		nodes, _ := n1.client().ListNodes(context.Background())
		for _, n := range nodes {
			if n.Name == "n3" {
				state = n.State
			}
		}
	}

	// p failed over by itself.
	for p := c.volume("p"); p.Primary == "n3"; p = c.volume("p") {
		if time.Now().After(deadline) {
			t.Fatalf("p still has the dead n3 as its primary: %+v\n%s", p, c.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("p failed over to %s", c.volume("p").Primary)
	// Still the primary of solo, which nothing can take over: refused,
	// with what to do.
	out, err := cliSettled(n1, "node", "remove", "n3")
	t.Logf("$ tandem node remove n3 (dead, primary of %s)\n%s", solo, out)
	if err == nil || !strings.Contains(out, "primary of volume "+solo) || !strings.Contains(out, "move") {
		t.Fatalf("removing n3, the primary of %s: %v, want a refusal saying to move %s's primary first\n%s", solo, err, solo, out)
	}
	// solo's primary is dead: it cannot be moved (no other copy).
	out, err = n1.cli("volume", "move", solo, "--primary", "n1")
	t.Logf("$ tandem volume move %s --primary n1 (its only copy, on n3, is dead): %v\n%s", solo, err, out)
	if out, err := cliSettled(n1, "volume", "delete", solo); err != nil {
		t.Fatalf("deleting %s: %v\n%s", solo, err, out)
	}

	out, err = cliSettled(n1, "node", "remove", "n3")
	t.Logf("$ tandem node remove n3\n%s", out)
	if err != nil {
		t.Fatalf("removing the dead n3: %v\n%s", err, out)
	}
	list := n1.mustCLI("node", "list")
	t.Logf("$ tandem node list\n%s", list)
	nodes, err := n1.client().ListNodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	voters := 0
	for _, n := range nodes {
		if n.Raft == "voter" || n.Raft == "leader" {
			voters++
		}
	}
	if regexp.MustCompile(`(?m)^n3\s`).MatchString(list) || slices.ContainsFunc(nodes, func(n admin.Node) bool { return n.Name == "n3" }) {
		t.Errorf("node list still shows the removed n3:\n%s", list)
	}
	if voters != 2 {
		t.Errorf("raft has %d voters after n3 was removed, want 2: %+v", voters, nodes)
	}
	v := c.volume(r.Name)
	t.Logf("$ tandem volume show %s\n%s", r.Name, n1.mustCLI("volume", "show", r.Name))
	if holds(v, "n3") {
		t.Errorf("volume %s still lists a copy on the removed n3: %+v", r.Name, v.Copies)
	}
	// r is still served and mirrored to what is left.
	writeBlock(t, s, 2, stampBlock(2, 1))
	verifyIdentical(t, n1, r.Name, "after n3 was removed")
}

// standaloneData is what populateStandalone leaves on a node: volumes
// solo (written, snapshot "before", written again) and other, the clone
// copy of solo@before, a registered key (APTPL) on solo and on other, and
// the identities the initiators saw.
type standaloneData struct {
	ids map[string]string // volume -> NAA/serial
}

const (
	keySolo  = 0xa11ce
	keyOther = 0xb0b
)

func populateStandalone(t *testing.T, n *node) standaloneData {
	t.Helper()
	n.mustCLI("volume", "create", "solo", "--size", "64MiB")
	n.mustCLI("volume", "create", "other", "--size", "32MiB")
	s := n.session(t, "solo", "iqn.2026-11.test:host-a", 1)
	defer s.Close()
	for b := int64(0); b < 64; b++ {
		writeBlock(t, s, b, stampBlock(b, 1))
	}
	n.mustCLI("snapshot", "create", "solo", "before")
	for b := int64(0); b < 32; b++ {
		writeBlock(t, s, b, stampBlock(b, 2))
	}
	n.mustCLI("volume", "clone", "solo@before", "copy")
	c, p := prOut(0, 0, 0, keySolo, true)
	mustDo(t, s, "REGISTER on solo", c, p, 0, statusGood)
	o := n.session(t, "other", "iqn.2026-11.test:host-b", 2)
	defer o.Close()
	for b := int64(0); b < 16; b++ {
		writeBlock(t, o, b, stampBlock(b, 3))
	}
	c, p = prOut(0, 0, 0, keyOther, true)
	mustDo(t, o, "REGISTER on other", c, p, 0, statusGood)
	mustDo(t, o, "SYNCHRONIZE CACHE", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, statusGood)
	mustDo(t, s, "SYNCHRONIZE CACHE", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, statusGood)
	d := standaloneData{ids: map[string]string{}}
	for _, v := range []string{"solo", "other", "copy"} {
		j := n.volumeJSON(v)
		d.ids[v] = fmt.Sprint(j["naa"], "/", j["serial"])
	}
	return d
}

// check asserts that every volume, the snapshot, the clone relation, the
// identities, the data and the registered keys are there, asking api's
// admin API and reading through portal's portal (the primary's: another
// node's port of the volume is standby or unavailable).
func (d standaloneData) check(t *testing.T, api, portal *node, when string) {
	t.Helper()
	vols, err := api.client().ListVolumes(context.Background())
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	var names []string
	for _, v := range vols {
		names = append(names, v.Name)
		if want, ok := d.ids[v.Name]; ok && fmt.Sprint(v.NAA, "/", v.Serial) != want {
			t.Errorf("%s: volume %s has NAA/serial %s/%s, before %s", when, v.Name, v.NAA, v.Serial, want)
		}
	}
	if !slices.Equal(names, []string{"copy", "other", "solo"}) {
		t.Fatalf("%s: volumes %v, want copy, other, solo", when, names)
	}
	snaps, err := api.client().ListSnapshots(context.Background(), "solo")
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	if len(snaps) != 1 || snaps[0].Name != "before" || !slices.Equal(snaps[0].Clones, []string{"copy"}) {
		t.Errorf("%s: solo's snapshots %+v, want \"before\" with the clone copy", when, snaps)
	}
	for _, r := range []struct {
		vol    string
		blocks int64
		stamp  func(b int64) uint64
		key    uint64
	}{
		{"solo", 64, func(b int64) uint64 { return 2 - uint64(b/32) }, keySolo}, // 0-31 written again
		{"copy", 64, func(int64) uint64 { return 1 }, 0},
		{"other", 16, func(int64) uint64 { return 3 }, keyOther},
	} {
		s := portal.session(t, r.vol, "iqn.2026-11.test:checker", 9)
		bad := 0
		for b := int64(0); b < r.blocks; b++ {
			if got := readBlock(t, s, b); !bytes.Equal(got, stampBlock(b, r.stamp(b))) && bad < 5 {
				bad++
				t.Errorf("%s: volume %s block %d holds block %d stamp %d, want stamp %d", when, r.vol, b,
					binary.BigEndian.Uint64(got), binary.BigEndian.Uint64(got[8:]), r.stamp(b))
			}
		}
		var want []uint64
		if r.key != 0 {
			want = []uint64{r.key}
		}
		if keys := readKeys(t, s); !slices.Equal(keys, want) {
			t.Errorf("%s: volume %s has registered keys %x, want %x", when, r.vol, keys, want)
		}
		s.Close()
	}
}

// 4. A standalone node keeps its volumes when it becomes a cluster: a node
// started without --join gets volumes, data, a snapshot, a clone and
// registered keys; a second node joins it; everything is still there,
// listed through either node and read through the primary's portal.
func TestStandaloneNodeBecomesACluster(t *testing.T) {
	base := t.TempDir()
	n1 := newLoopbackNode(t, base, 0, "n1")
	n1.start()
	t.Cleanup(n1.stop)
	d := populateStandalone(t, n1)
	d.check(t, n1, n1, "standalone")

	n2 := newLoopbackNode(t, base, 1, "n2")
	n2.join, n2.keyFile = []string{n1.gossip}, filepath.Join(n1.data, "cluster.key")
	n2.start()
	t.Cleanup(n2.stop)
	c := &testCluster{t: t, nodes: []*node{n1, n2}, key: n2.keyFile}
	c.waitMembers(2)
	t.Logf("$ tandem node list\n%s", n2.mustCLI("node", "list"))
	t.Logf("$ tandem volume list\n%s", n2.mustCLI("volume", "list"))
	// n2 holds no copy: its port of each volume is unavailable (ALUA), so
	// the data is read through n1's, the primary's.
	d.check(t, n2, n1, "after n2 joined (asked through n2)")
	d.check(t, n1, n1, "after n2 joined (asked through n1)")
}

// 5. Upgrade from a data directory without raft state (what a node of the
// version before the cluster has): a node with volumes, a snapshot, a
// clone and registered keys is stopped, its raft/ directory deleted, and
// started again: it imports everything from its local catalog, and the
// data, identities and keys are as they were.
func TestClusterImportsADataDirectoryWithoutRaftState(t *testing.T) {
	n := newLoopbackNode(t, t.TempDir(), 0, "n1")
	n.start()
	t.Cleanup(n.stop)
	d := populateStandalone(t, n)
	d.check(t, n, n, "before the restart")
	n.stop()
	if err := os.RemoveAll(filepath.Join(n.data, "raft")); err != nil {
		t.Fatal(err)
	}
	n.start()
	d.check(t, n, n, "after a restart without raft state")
	if !strings.Contains(n.log.String(), "local volume brought into the cluster catalog") {
		t.Errorf("the node did not log the import of its volumes:\n%s", tail(n.log.String(), 40))
	}
}

// preClusterCommit is the last commit before the cluster work began (its
// go.mod has no raft): its `tandem serve` stands for the previous release.
const preClusterCommit = "56e173c900f07879f96fde3f818c4c3c0c6e776e"

// buildPreClusterRelease builds the previous release's binary from this
// repository's history; the test is skipped where the history is not
// there (a shallow clone).
func buildPreClusterRelease(t *testing.T) string {
	t.Helper()
	requireTool(t, "git", "tar")
	if out, err := exec.Command("git", "cat-file", "-e", preClusterCommit+"^{commit}").CombinedOutput(); err != nil {
		t.Skipf("commit %s is not in this clone (shallow?): %v %s", preClusterCommit, err, out)
	}
	dir := t.TempDir()
	tarball := filepath.Join(dir, "src.tar")
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, time.Minute, "git", "-C", strings.TrimSpace(string(top)), "archive", "--output", tarball, preClusterCommit); err != nil {
		t.Fatalf("git archive: %v\n%s", err, out)
	}
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, time.Minute, "tar", "-xf", tarball, "-C", src); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	bin := filepath.Join(dir, "tandem-previous")
	build := exec.Command("go", "build", "-o", bin, "./cmd/tandem")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the previous release (%s): %v\n%s", preClusterCommit, err, out)
	}
	return bin
}

// servePrevious runs the previous release's `tandem serve` on n's data
// directory, portal and API (it knows no cluster flags) until stop.
func servePrevious(t *testing.T, bin string, n *node) (stop func()) {
	t.Helper()
	log := new(logBuffer)
	cmd := exec.Command(bin, "serve", "--data", n.data, "--portal", n.portal, "--api", n.api, "--name", n.name,
		"--allow-unsafe-filesystem")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("the previous release ignored SIGTERM\n%s", log)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + n.api + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return stop
			}
		}
		select {
		case err := <-done:
			t.Fatalf("the previous release's tandem serve exited: %v\n%s", err, log)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("the previous release not healthy after 30s\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// 5b. Upgrade from the previous release itself: its binary, built from
// this repository's history, makes the volumes, snapshot, clone and
// registered keys (through its own CLI); this version starts on that data
// directory and has everything, data and keys included.
func TestUpgradeFromThePreClusterRelease(t *testing.T) {
	bin := buildPreClusterRelease(t)
	n := newLoopbackNode(t, t.TempDir(), 0, "n1")
	stop := servePrevious(t, bin, n)
	current := tandemBin
	tandemBin = bin // the previous release's CLI for its node
	d := populateStandalone(t, n)
	d.check(t, n, n, "on the previous release")
	tandemBin = current
	stop()
	if _, err := os.Stat(filepath.Join(n.data, "raft")); !os.IsNotExist(err) {
		t.Fatalf("the previous release made %s/raft: %v", n.data, err)
	}
	n.start()
	t.Cleanup(n.stop)
	t.Logf("$ tandem volume list (after the upgrade)\n%s", n.mustCLI("volume", "list"))
	d.check(t, n, n, "after the upgrade")
}

// scrape returns every series of a node's /metrics, by its name and
// labels as exposed (labels sorted by name).
func scrape(t *testing.T, n *node) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + n.api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics on %s: %s %v", n.name, resp.Status, err)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		i := strings.LastIndexByte(line, ' ')
		if line == "" || line[0] == '#' || i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics on %s: %q: %v", n.name, line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// 6. /metrics: after I/O on a 2-copy volume, the primary counts the
// volume's operations and their latencies and shows its replica in sync;
// the replica, which serves no initiator, counts none; exactly one node
// says it is the raft leader; each sees every node alive.
func TestClusterMetrics(t *testing.T) {
	c := startTestCluster(t, twoDataNodes)
	c.nodes[0].mustCLI("volume", "create", "m", "--size", "32MiB", "--copies", "2")
	v := c.waitInSync("m", time.Minute)
	primary, replica := c.node(v.Primary), c.replicaOf(v)
	s := primary.session(t, "m", "iqn.2026-11.test:metrics", 1)
	defer s.Close()
	const n = 16
	for b := int64(0); b < n; b++ {
		writeBlock(t, s, b, stampBlock(b, 1))
	}
	for b := int64(0); b < n; b++ {
		readBlock(t, s, b)
	}
	mustDo(t, s, "SYNCHRONIZE CACHE", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, statusGood)

	m := scrape(t, primary)
	atLeast := map[string]float64{
		`tandem_volume_ops_total{op="write",volume="m"}`:                        n,
		`tandem_volume_ops_total{op="read",volume="m"}`:                         n,
		`tandem_volume_ops_total{op="flush",volume="m"}`:                        1,
		`tandem_volume_bytes_total{op="write",volume="m"}`:                      n * 4096,
		`tandem_volume_latency_seconds_count{op="write",volume="m"}`:            n,
		`tandem_volume_latency_seconds_count{op="read",volume="m"}`:             n,
		`tandem_volume_latency_seconds_bucket{op="write",volume="m",le="+Inf"}`: n,
	}
	var shown []string
	for k, want := range atLeast {
		got, ok := m[k]
		shown = append(shown, fmt.Sprintf("%s %v", k, got))
		if !ok || got < want {
			t.Errorf("primary %s: %s is %v (present: %v), want at least %v", primary.name, k, got, ok, want)
		}
	}
	if sum := m[`tandem_volume_latency_seconds_sum{op="write",volume="m"}`]; !(sum > 0) {
		t.Errorf("primary %s: write latency sum %v, want > 0", primary.name, sum)
	}
	inSync := fmt.Sprintf(`tandem_replica_in_sync{replica="%s",volume="m"}`, replica.name)
	if got, ok := m[inSync]; !ok || got != 1 {
		t.Errorf("primary %s: %s is %v (present: %v), want 1", primary.name, inSync, got, ok)
	}
	slices.Sort(shown)
	t.Logf("primary %s:\n  %s\n  %s %v", primary.name, strings.Join(shown, "\n  "), inSync, m[inSync])
	if _, ok := scrape(t, replica)[`tandem_volume_ops_total{op="write",volume="m"}`]; ok {
		t.Errorf("replica %s counts initiator writes to m: it serves none", replica.name)
	}

	leaders := 0.0
	for _, nd := range c.nodes {
		m := scrape(t, nd)
		l, ok := m["tandem_raft_leader"]
		if !ok {
			t.Errorf("%s: no tandem_raft_leader", nd.name)
		}
		leaders += l
		if alive := m[`tandem_members{state="alive"}`]; alive != float64(len(c.nodes)) {
			t.Errorf("%s: tandem_members{state=\"alive\"} is %v, want %d", nd.name, alive, len(c.nodes))
		}
		t.Logf("%s: tandem_raft_leader %v, tandem_members{state=\"alive\"} %v", nd.name, l, m[`tandem_members{state="alive"}`])
	}
	if leaders != 1 {
		t.Errorf("%v nodes say they are the raft leader, want exactly 1", leaders)
	}
}

// volumeIDFromLog is the volume's ID as n logged it when it made its
// local copy (the admin API does not show IDs).
func volumeIDFromLog(t *testing.T, n *node, vol string) string {
	t.Helper()
	m := regexp.MustCompile(`msg="local copy made" volume=` + regexp.QuoteMeta(vol) + ` id=([0-9a-f]+)`).FindStringSubmatch(n.log.String())
	if m == nil {
		t.Fatalf("%s did not log making its copy of %s:\n%s", n.name, vol, tail(n.log.String(), 40))
	}
	return m[1]
}

// replClient speaks the replication wire protocol on a link, as a primary
// would.
type replClient struct {
	t    *testing.T
	conn *link.Conn
}

func dialReplica(t *testing.T, n *node, key link.Key) *replClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := link.Dial(ctx, n.link, link.PurposeReplication, link.Config{Key: key, Name: "old-primary"})
	if err != nil {
		t.Fatalf("replication link to %s: %v", n.name, err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return &replClient{t: t, conn: conn}
}

func (c *replClient) send(m replication.Message) error {
	_, err := c.conn.Write(m.AppendMarshal(nil))
	return err
}

// recv reads the next reply; an error when the replica closed the link.
func (c *replClient) recv() (*replication.Reply, error) {
	hdr := make([]byte, replication.HeaderLen)
	if _, err := io.ReadFull(c.conn, hdr); err != nil {
		return nil, err
	}
	h, err := replication.ParseHeader(hdr)
	if err != nil {
		return nil, err
	}
	body := make([]byte, h.BodyLen)
	if _, err := io.ReadFull(c.conn, body); err != nil {
		return nil, err
	}
	m, err := replication.ParseBody(h, body)
	if err != nil {
		return nil, err
	}
	r, ok := m.(*replication.Reply)
	if !ok {
		return nil, fmt.Errorf("a %T from the replica", m)
	}
	return r, nil
}

// sessionWhenServed logs in to a volume at n's portal once it takes the
// login (after a move, the catalog names the new primary before it
// serves; meanwhile logins are redirected), for at most 30 s.
func sessionWhenServed(t *testing.T, n *node, vol, name string, isid byte) *initiator.Session {
	t.Helper()
	start := time.Now()
	var first error
	for tries := 0; ; tries++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := initiator.Dial(ctx, initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:" + vol, Name: name, ISID: [6]byte{0x80, 0, 0, 0, 0, isid}})
		cancel()
		if err == nil {
			s.Close()
			if first != nil {
				t.Logf("%s took logins to %s %v after the first try, which failed: %v", n.name, vol, time.Since(start).Round(time.Millisecond), first)
			}
			return n.session(t, vol, name, isid)
		}
		if first == nil {
			first = err
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("%s does not take logins to %s after 30 s: %v\n%s", n.name, vol, err, tail(n.log.String(), 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// 7. A deposed primary, or anyone speaking an old epoch, is refused by a
// real replica process: the volume is moved to the replica and back
// (epoch 3); a replication link opened with the cluster key says Hello at
// epoch 1, then 2, and sends a Write at that epoch: the Hello is answered
// StaleEpoch (with the replica's epoch, 3) and the write is never applied
// (the copies stay identical and the block reads back unchanged). A Hello
// at epoch 3 is accepted, so the test tells the two apart; it supersedes
// the primary's stream, which the primary finds out at its next write and
// recovers from by a resync.
func TestClusterReplicaRefusesAnOldEpoch(t *testing.T) {
	c := startTestCluster(t, twoDataNodes)
	entry := c.nodes[0]
	entry.mustCLI("volume", "create", "fence", "--size", "32MiB", "--copies", "2")
	v := c.waitInSync("fence", time.Minute)
	primary, replica := c.node(v.Primary), c.replicaOf(v)
	for _, to := range []*node{replica, primary} {
		out, err := entry.cli("volume", "move", "fence", "--primary", to.name)
		if err != nil {
			// A move answers once the catalog names the new primary,
			// which may not serve yet: the next move is told to retry.
			t.Logf("$ tandem volume move fence --primary %s: %v; retrying", to.name, err)
			out, err = cliSettled(entry, "volume", "move", "fence", "--primary", to.name)
		}
		if err != nil {
			t.Fatalf("moving fence to %s: %v\n%s", to.name, err, out)
		}
		c.waitInSync("fence", time.Minute)
	}
	v = c.volume("fence")
	if v.Epoch != 3 || v.Primary != primary.name {
		t.Fatalf("after two moves: primary %s epoch %d, want %s at epoch 3", v.Primary, v.Epoch, primary.name)
	}
	id := volumeIDFromLog(t, replica, "fence")
	key, err := link.ParseKey(mustRead(t, c.key))
	if err != nil {
		t.Fatal(err)
	}
	s := sessionWhenServed(t, primary, "fence", "iqn.2026-11.test:fence", 1)
	defer s.Close()
	const block = 7
	writeBlock(t, s, block, stampBlock(block, 1))
	garbage := bytes.Repeat([]byte{0xee}, 4096)

	for _, epoch := range []uint64{1, 2} {
		rc := dialReplica(t, replica, key)
		if err := rc.send(&replication.Hello{ID: 1, VolumeID: id, Epoch: epoch}); err != nil {
			t.Fatal(err)
		}
		r, err := rc.recv()
		if err != nil {
			t.Fatalf("Hello at epoch %d: %v", epoch, err)
		}
		t.Logf("Hello for %s at epoch %d: %v (%q), replica's epoch %d", id, epoch, r.Status, r.Message, r.Epoch)
		if r.Status != replication.StatusStaleEpoch || r.Epoch != 3 {
			t.Fatalf("Hello at epoch %d: %+v, want StaleEpoch with the replica's epoch 3", epoch, r)
		}
		if err := rc.send(&replication.Write{ID: 2, VolumeID: id, Epoch: epoch, Off: block * 4096, Data: garbage}); err != nil {
			t.Logf("Write at epoch %d: not even sent: %v", epoch, err)
		} else if r, err := rc.recv(); err != nil {
			t.Logf("Write at epoch %d: the replica closed the link: %v", epoch, err)
		} else {
			t.Logf("Write at epoch %d: %v (%q)", epoch, r.Status, r.Message)
			if r.Status == replication.StatusOK {
				t.Errorf("the replica acknowledged a Write at epoch %d after refusing its Hello", epoch)
			}
		}
		rc.conn.Close()
	}
	if got := readBlock(t, s, block); !bytes.Equal(got, stampBlock(block, 1)) {
		t.Fatalf("block %d changed on the primary", block)
	}
	out := verifyIdentical(t, entry, "fence", "after the Writes at old epochs")
	t.Logf("after the writes at epochs 1 and 2: %s", out)

	// The current epoch is accepted: the refusals above are the epoch's.
	// This stream stays open, as a primary's would when it is deposed.
	rc := dialReplica(t, replica, key)
	rc.conn.SetDeadline(time.Now().Add(3 * time.Minute))
	defer rc.conn.Close()
	if err := rc.send(&replication.Hello{ID: 1, VolumeID: id, Epoch: 3}); err != nil {
		t.Fatal(err)
	}
	r, err := rc.recv()
	if err != nil {
		t.Fatalf("Hello at epoch 3: %v", err)
	}
	t.Logf("Hello for %s at epoch 3: %v, size %d, replica's epoch %d", id, r.Status, r.Size, r.Epoch)
	if r.Status != replication.StatusOK || r.Epoch != 3 || int64(r.Size) != v.Size {
		t.Fatalf("Hello at the current epoch 3: %+v, want OK with the volume's size %d", r, v.Size)
	}

	// That Hello superseded the primary's stream: its next write finds
	// out, drops the replica and resyncs it over a new stream.
	writeBlock(t, s, block+1, stampBlock(block+1, 1))
	t.Logf("after the primary's next write, the copy on %s is %s", replica.name, copyState(c.volume("fence"), replica.name))
	c.waitInSync("fence", time.Minute)
	out = verifyIdentical(t, entry, "fence", "after the primary's stream was superseded")
	t.Logf("after the resync: %s", out)
	s.Close()

	// The volume moves to the replica (epoch 4): the stream opened at
	// epoch 3 is now a deposed primary's, and its Write is refused.
	if out, err := cliSettled(entry, "volume", "move", "fence", "--primary", replica.name); err != nil {
		t.Fatalf("moving fence to %s: %v\n%s", replica.name, err, out)
	}
	if v := c.waitInSync("fence", time.Minute); v.Epoch != 4 || v.Primary != replica.name {
		t.Fatalf("after the third move: primary %s epoch %d, want %s at epoch 4", v.Primary, v.Epoch, replica.name)
	}
	// Once the new primary serves, it has raised its own copy's epoch.
	s = sessionWhenServed(t, replica, "fence", "iqn.2026-11.test:fence", 1)
	defer s.Close()
	if err := rc.send(&replication.Write{ID: 2, VolumeID: id, Epoch: 3, Off: block * 4096, Data: garbage}); err != nil {
		t.Fatalf("Write at epoch 3 on the stream opened at epoch 3: not sent: %v", err)
	}
	r, err = rc.recv()
	if err != nil {
		t.Fatalf("Write at epoch 3 after the move to epoch 4: no answer: %v", err)
	}
	t.Logf("Write at epoch 3 on a stream opened at epoch 3, after the move to epoch 4: %v (%q), replica's epoch %d", r.Status, r.Message, r.Epoch)
	if r.Status != replication.StatusStaleEpoch || r.Epoch != 4 {
		t.Fatalf("a deposed primary's Write: %+v, want StaleEpoch with the epoch 4", r)
	}
	if got := readBlock(t, s, block); !bytes.Equal(got, stampBlock(block, 1)) {
		t.Fatalf("block %d changed", block)
	}
	out = verifyIdentical(t, entry, "fence", "after the deposed stream's Write")
	t.Logf("after the deposed stream's Write: %s", out)
}

// 8. A cluster whose nodes (two data nodes and a witness) all run with
// --insecure-links (authenticated, not encrypted) forms, mirrors writes
// and verifies the copies identical; a replica killed and restarted
// resyncs over such links.
func TestClusterWithInsecureLinks(t *testing.T) {
	// Two data nodes and a witness: the raft majority outlives the replica.
	c := startTestClusterWith(t, topologies[1], func(n *node) { n.extra = append(n.extra, "--insecure-links") })
	entry := c.nodes[1]
	entry.mustCLI("volume", "create", "plain", "--size", "32MiB", "--copies", "2")
	v := c.waitInSync("plain", time.Minute)
	primary, replica := c.node(v.Primary), c.replicaOf(v)
	s := primary.session(t, "plain", "iqn.2026-11.test:plain", 1)
	defer s.Close()
	for b := int64(0); b < 256; b++ {
		writeBlock(t, s, b, stampBlock(b, 1))
	}
	t.Logf("mirrored over links without encryption: %s", verifyIdentical(t, entry, "plain", "after the writes"))

	replica.kill()
	for b := int64(0); b < 64; b++ {
		writeBlock(t, s, b, stampBlock(b, 2))
	}
	replica.start()
	c.waitInSync("plain", time.Minute)
	for b := int64(0); b < 256; b++ {
		if got, want := readBlock(t, s, b), stampBlock(b, 2-uint64(min(b/64, 1))); !bytes.Equal(got, want) {
			t.Fatalf("block %d holds stamp %d", b, binary.BigEndian.Uint64(got[8:]))
		}
	}
	t.Logf("after the replica was killed, written around and resynced: %s", verifyIdentical(t, entry, "plain", "after the resync"))

	// The node does send in the clear: a link through a relay that keeps
	// what passes carries a Hello's volume ID, and the refusal naming it,
	// readable, when the dialler asks for an insecure link too, and not
	// when it does not.
	key, err := link.ParseKey(mustRead(t, c.key))
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("no-such-volume-%x", time.Now().UnixNano())
	for _, insecure := range []bool{true, false} {
		relay, captured := captureRelay(t, replica.link)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := link.Dial(ctx, relay, link.PurposeReplication, link.Config{Key: key, Name: "tester", Insecure: insecure})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		rc := &replClient{t: t, conn: conn}
		if err := rc.send(&replication.Hello{ID: 1, VolumeID: marker, Epoch: 1}); err != nil {
			t.Fatal(err)
		}
		r, err := rc.recv()
		if err != nil || r.Status != replication.StatusNoCopy {
			t.Fatalf("Hello for a volume the replica does not hold: %+v %v", r, err)
		}
		conn.Close()
		sent, received := captured()
		inClear := bytes.Contains(sent, []byte(marker)) && bytes.Contains(received, []byte(marker))
		t.Logf("dialler insecure=%v: the volume ID readable on the wire both ways: %v", insecure, inClear)
		if inClear != insecure {
			t.Errorf("dialler insecure=%v, node --insecure-links: the link's bytes readable: %v, want %v", insecure, inClear, insecure)
		}
	}
}

// captureRelay relays one connection to target and returns its address
// and a function that closes it and returns the bytes that went each way.
func captureRelay(t *testing.T, target string) (string, func() (sent, received []byte)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var sent, received logBuffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer ln.Close()
		in, err := ln.Accept()
		if err != nil {
			return
		}
		defer in.Close()
		out, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer out.Close()
		back := make(chan struct{})
		go func() {
			io.Copy(io.MultiWriter(in, &received), out)
			in.Close()
			close(back)
		}()
		io.Copy(io.MultiWriter(out, &sent), in)
		out.Close()
		<-back
	}()
	return ln.Addr().String(), func() ([]byte, []byte) {
		<-done
		return []byte(sent.String()), []byte(received.String())
	}
}

// Where the issue is silent: when `volume move` answers ("primary is now
// X; multipath initiators switch to its port"), X serves the volume:
// a login at X's portal and a snapshot (run on the primary) right after
// the answer both work, move after move.
func TestClusterMoveAnswersOnceTheNewPrimaryServes(t *testing.T) {
	c := startTestCluster(t, twoDataNodes)
	entry := c.nodes[0]
	entry.mustCLI("volume", "create", "mv", "--size", "32MiB", "--copies", "2")
	v := c.waitInSync("mv", time.Minute)
	to := c.replicaOf(v)
	for round := 1; round <= 4; round++ {
		from := c.node(v.Primary)
		out, err := cliSettled(entry, "volume", "move", "mv", "--primary", to.name)
		if err != nil {
			t.Fatalf("round %d: moving mv to %s: %v\n%s", round, to.name, err, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, lerr := initiator.Dial(ctx, initiator.Config{Addr: to.portal, Target: "iqn.2026-11.io.tandem:mv",
			Name: "iqn.2026-11.test:mover", ISID: [6]byte{0x80, 0, 0, 0, 0, byte(round)}})
		cancel()
		if lerr == nil {
			s.Close()
		}
		_, serr := entry.cli("snapshot", "create", "mv", fmt.Sprintf("s%d", round))
		t.Logf("round %d: %s; login at %s right after: %v; snapshot right after: %v", round, strings.TrimSpace(out), to.name, lerr, serr)
		if lerr != nil {
			t.Errorf("round %d: the move to %s answered, and a login at %s's portal fails: %v", round, to.name, to.name, lerr)
		}
		if serr != nil {
			t.Errorf("round %d: the move to %s answered, and a snapshot is refused: %v", round, to.name, serr)
		}
		v = c.waitInSync("mv", time.Minute)
		to = from
	}
}
