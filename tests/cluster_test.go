package tests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestClusterMirroring is issue 9's acceptance on real processes, for each
// topology (three data nodes; two data nodes and a witness):
//
//  1. the cluster forms; a 2-copy volume is created through a node that
//     is not the leader; 256 MiB written through libiscsi (qemu-img, to
//     the primary's portal: the replica's port is standby, TestClusterALUA)
//     read back identical; verify finds the copies identical;
//  2. the replica is killed (SIGKILL) under a stamped write load: writes go
//     on once it is dropped (the stall is reported); restarted, it resyncs
//     incrementally (bytes copied ≪ volume size) and verify finds the
//     copies identical; no acknowledged write is lost;
//  3. a planned move under the load: no acknowledged write lost, copies
//     identical;
//  4. with a witness, the witness holds no volume data.
func TestClusterMirroring(t *testing.T) {
	requireTool(t, "qemu-img")
	for _, top := range topologies {
		t.Run(strings.ReplaceAll(top.name, " ", "_"), func(t *testing.T) {
			testClusterMirroring(t, top)
		})
	}
}

func testClusterMirroring(t *testing.T, top topology) {
	c := startTestCluster(t, top)
	entry := c.nodes[top.data-1] // a data node that did not start the cluster
	out := entry.mustCLI("volume", "create", "v", "--size", "256MiB", "--copies", "2")
	t.Logf("$ tandem volume create v --size 256MiB --copies 2\n%s", out)
	v := c.waitInSync("v", 60*time.Second)
	primary := c.node(v.Primary)
	var replica *node
	for _, cp := range v.Copies {
		if cp.Node != v.Primary {
			replica = c.node(cp.Node)
		}
	}

	// 1. 256 MiB through a real initiator.
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 256<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	via := primary.url("v")
	start := time.Now()
	if out, err := run(t, 5*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-t", "none", src, via); err != nil {
		t.Fatalf("writing 256 MiB through %s: %v\n%s\n%s", via, err, out, c.logs())
	}
	t.Logf("256 MiB written through %s (the primary %s) in %v", via, primary.name, time.Since(start).Round(time.Millisecond))
	back := filepath.Join(dir, "back.raw")
	if out, err := run(t, 5*time.Minute, "qemu-img", "convert", "-f", "raw", "-O", "raw", primary.url("v"), back); err != nil {
		t.Fatalf("reading back: %v\n%s", err, out)
	}
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("256 MiB read back from the primary differ from what was written (sha256 %x, want %x)", sha256.Sum256(got), sha256.Sum256(data))
	}
	out = entry.mustCLI("volume", "verify", "v")
	t.Logf("$ tandem volume verify v\n%s", out)
	if !strings.Contains(out, "identical") {
		t.Fatalf("verify: %s", out)
	}
	t.Logf("$ tandem node list\n%s", entry.mustCLI("node", "list"))
	t.Logf("$ tandem volume show v\n%s", entry.mustCLI("volume", "show", "v"))

	// 2. The replica killed under a write load, then restarted.
	load := newStampedLoad(t, "v", 16384, primary.portal)
	load.start(4)
	time.Sleep(2 * time.Second)
	before := load.count()
	killedAt := time.Now()
	replica.kill()
	t.Logf("replica %s killed (SIGKILL) under the load after %d writes", replica.name, before)
	time.Sleep(3 * time.Second)
	after := load.count()
	if after <= before {
		t.Fatalf("no write completed in the 3 s after the replica was killed (%d before, %d after)\n%s", before, after, c.logs())
	}
	t.Logf("writes went on without the replica: %d in the 3 s after the kill; the longest write in flight at or after the kill took %v (the drop committed through raft)",
		after-before, load.stallAround(killedAt, 3*time.Second).Round(time.Millisecond))
	v = c.volume("v")
	for _, cp := range v.Copies {
		if cp.Node == replica.name && cp.State == "in-sync" {
			t.Fatalf("the killed replica is still in the in-sync set: %+v", v.Copies)
		}
	}
	replica.start()
	restarted := time.Now()
	v = c.waitInSync("v", 2*time.Minute)
	copied := primary.metric(fmt.Sprintf(`tandem_resync_bytes_copied_total{replica="%s",volume="v"}`, replica.name))
	t.Logf("replica restarted and in sync again after %v: resync copied %.0f bytes of the %d-byte volume (%.1f%%)",
		time.Since(restarted).Round(time.Millisecond), copied, v.Size, 100*copied/float64(v.Size))
	if copied < 0 || copied >= float64(v.Size)/2 {
		t.Errorf("the resync copied %.0f bytes of a %d-byte volume: not incremental", copied, v.Size)
	}
	load.finish()
	load.check(primary.portal)
	out = entry.mustCLI("volume", "verify", "v")
	t.Logf("after the resync: %s", out)
	if !strings.Contains(out, "identical") {
		t.Fatalf("verify after the resync: %s", out)
	}

	// 3. A planned move under the load.
	load = newStampedLoad(t, "v", 16384, primary.portal, replica.portal)
	load.start(4)
	time.Sleep(time.Second)
	moveStart := time.Now()
	out = entry.mustCLI("volume", "move", "v", "--primary", replica.name)
	moveStall := load.stallAround(moveStart, time.Second)
	t.Logf("$ tandem volume move v --primary %s (%v)\n%s", replica.name, time.Since(moveStart).Round(time.Millisecond), out)
	time.Sleep(2 * time.Second)
	load.finish()
	t.Logf("move under load: %d writes, %d retried by the initiators (on another path), the longest write around the move took %v",
		load.count(), load.retried(), max(moveStall, load.stallAround(moveStart, time.Second)).Round(time.Millisecond))
	v = c.volume("v")
	if v.Primary != replica.name {
		t.Fatalf("primary is %s after the move, want %s", v.Primary, replica.name)
	}
	load.check(replica.portal)
	out = entry.mustCLI("volume", "verify", "v")
	t.Logf("after the move: %s", out)
	if !strings.Contains(out, "identical") {
		t.Fatalf("verify after the move: %s", out)
	}

	// 4. The witness holds no volume data.
	if top.witness {
		w := c.node("w")
		nodes, err := w.client().ListNodes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Name == "w" && (n.Role != "witness" || len(n.Volumes) > 0 || n.Raft == "" || n.Raft == "nonvoter") {
				t.Fatalf("witness: %+v", n)
			}
		}
		layers, _ := filepath.Glob(filepath.Join(w.data, "layers", "*"))
		if len(layers) > 0 {
			t.Fatalf("the witness holds layer files: %v", layers)
		}
		t.Logf("the witness is a voter holding no volume data (no layer files in %s)", w.data)
	}
}

func (l *stampedLoad) count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writes
}

func (l *stampedLoad) retried() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.retries
}

func (l *stampedLoad) stall() (time.Duration, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.maxStall, l.stallAt
}

var _ = slices.Contains[[]string]

// TestClusterAddRemoveCopy: `volume add-copy --wait` builds a new copy in
// full while writes go on, shows progress, and the copy joins the in-sync
// set identical; `remove-copy` drops one, and its node deletes its files.
func TestClusterAddRemoveCopy(t *testing.T) {
	requireTool(t, "qemu-img")
	c := startTestCluster(t, topology{"three data nodes", 3, false})
	n1 := c.nodes[0]
	n1.mustCLI("volume", "create", "a", "--size", "128MiB", "--copies", "1")
	v := c.waitInSync("a", time.Minute)
	primary := c.node(v.Primary)
	var other *node
	for _, n := range c.nodes {
		if n.name != v.Primary {
			other = n
			break
		}
	}
	src := filepath.Join(t.TempDir(), "src.raw")
	data := make([]byte, 64<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, 2*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, primary.url("a")); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	load := newStampedLoad(t, "a", 4096, primary.portal)
	load.start(2)
	out := n1.mustCLI("volume", "add-copy", "a", "--node", other.name, "--wait")
	t.Logf("$ tandem volume add-copy a --node %s --wait\n%s", other.name, out)
	if !strings.Contains(out, "in sync") {
		t.Fatalf("add-copy --wait: %s", out)
	}
	load.finish()
	load.check(primary.portal)
	copied := primary.metric(fmt.Sprintf(`tandem_resync_bytes_copied_total{replica="%s",volume="a"}`, other.name))
	t.Logf("the new copy's rebuild copied %.0f bytes (the volume holds %d written)", copied, len(data))
	if copied < float64(len(data)) {
		t.Errorf("the rebuild copied %.0f bytes, less than the %d written", copied, len(data))
	}
	if out := n1.mustCLI("volume", "verify", "a"); !strings.Contains(out, "2 copies") || !strings.Contains(out, "identical") {
		t.Fatalf("verify after add-copy: %s", out)
	}
	out = n1.mustCLI("volume", "remove-copy", "a", "--node", other.name)
	t.Logf("$ tandem volume remove-copy a --node %s\n%s", other.name, out)
	v = c.volume("a")
	if len(v.Copies) != 1 || v.Copies[0].Node != primary.name {
		t.Fatalf("copies after remove-copy: %+v", v.Copies)
	}
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		layers, _ := filepath.Glob(filepath.Join(other.data, "layers", "*.layer"))
		if len(layers) == 0 {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the removed copy's files stay on %s: %v", other.name, layers)
		}
	}
	if _, err := n1.cli("volume", "remove-copy", "a", "--node", primary.name); err == nil {
		t.Fatal("removing the primary's copy was accepted")
	}
}
