package tests

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/target/iscsi/initiator"
	"tandem.io/tandem/volume/vfs"
)

// Issue 8, defect 7: a volume whose data is damaged does not stop the
// others. The node starts, `volume list` shows the damaged one with its
// error, discovery lists its target, and a login to it is refused with
// Target Error / Service Unavailable (3/1), a clear answer an initiator
// retries later; the other volume is served.
func TestDamagedVolumeTarget(t *testing.T) {
	requireTool(t, "iscsi-ls", "qemu-io")
	data := t.TempDir()
	n := startNode(t, data)
	n.mustCLI("volume", "create", "good", "--size", "32MiB")
	n.mustCLI("volume", "create", "bad", "--size", "16MiB")
	n.stop()
	// Damage the 16 MiB volume's head layer (cut short, as a bad disk or
	// a careless administrator might).
	files, _ := filepath.Glob(filepath.Join(data, "layers", "*.layer"))
	cut := 0
	for _, f := range files {
		if st, err := os.Stat(f); err == nil && st.Size() == 16<<20 {
			os.Truncate(f, 1000)
			cut++
		}
	}
	if cut != 1 {
		t.Fatalf("found %d 16 MiB layer files, want 1", cut)
	}
	n.start()
	out := n.mustCLI("volume", "list")
	if !strings.Contains(out, "bad") || !strings.Contains(out, "good") {
		t.Fatalf("volume list does not show both volumes:\n%s", out)
	}
	if v := n.volumeJSON("bad"); v["error"] == nil || !strings.Contains(v["error"].(string), "layer") {
		t.Fatalf("volume show of the damaged volume says no error: %v", v)
	}
	if out := n.mustCLI("volume", "show", "bad"); !strings.Contains(strings.ToLower(out), "error") {
		t.Fatalf("volume show does not print the error:\n%s", out)
	}
	disc, err := run(t, 20*time.Second, "iscsi-ls", "iscsi://"+n.portal)
	if err != nil || !strings.Contains(disc, "tandem:bad") || !strings.Contains(disc, "tandem:good") {
		t.Fatalf("discovery does not list both targets: %v\n%s", err, disc)
	}
	_, err = initiator.Dial(context.Background(), initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:bad", Name: "iqn.2026-11.test:d", Timeout: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "status 3/1") {
		t.Fatalf("login to the damaged volume: %v, want refused with 3/1 (service unavailable)", err)
	}
	// The node writes the reason before it answers; the test reads the
	// node's output through a pipe, so give the copy a moment.
	for start := time.Now(); !strings.Contains(n.log.String(), "cannot be served"); time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("the node log does not say why the login was refused:\n%s", tail(n.log.String(), 20))
		}
	}
	if out, err := run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 5 0 64k", "-c", "read -P 5 0 64k", n.url("good")); err != nil {
		t.Fatalf("the healthy volume is not served: %v\n%s", err, out)
	}
	// The damaged volume can be deleted, which ends its target.
	n.mustCLI("volume", "delete", "bad")
	if disc, _ := run(t, 20*time.Second, "iscsi-ls", "iscsi://"+n.portal); strings.Contains(disc, "tandem:bad") {
		t.Fatalf("the deleted volume's target is still listed:\n%s", disc)
	}
}

// Issue 8, defect 7, in a cluster: the catalog decides. A delete whose
// local removal fails (the local catalog's commit fails) takes the volume
// out of the cluster at once — no listing, no target, a login refused —
// and the node keeps removing its files until the disk lets it: nothing
// is left half-served, and nothing of the volume stays behind.
func TestFailedDeleteKeepsServing(t *testing.T) {
	n := startInProcess(t, t.TempDir())
	ctx := context.Background()
	if _, err := n.api.CreateVolume(ctx, admin.CreateVolumeRequest{Name: "v", Size: admin.Size{Text: "16MiB"}}); err != nil {
		t.Fatal(err)
	}
	s := n.session("v")
	mustDo(t, s, "write", write10(0, 8), make([]byte, 4096), 0, statusGood)
	s.Close()
	layers := func() int {
		m, _ := filepath.Glob(filepath.Join(n.data, "layers", "*.layer"))
		return len(m)
	}
	remove := n.fs.Inject(vfs.Fault{Op: vfs.OpCommit, Err: syscall.EIO})
	if err := n.api.DeleteVolume(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.api.GetVolume(ctx, "v"); err == nil {
		t.Fatal("the deleted volume is still listed")
	}
	if _, err := initiator.Dial(ctx, initiator.Config{Addr: n.portal, Target: "iqn.2026-11.io.tandem:v", Name: "iqn.2026-11.test:x", Timeout: 5 * time.Second}); err == nil {
		t.Fatal("the deleted volume still takes logins")
	}
	time.Sleep(1500 * time.Millisecond) // the node tries to remove its files, and fails
	if layers() == 0 {
		t.Fatal("the layer files went although every local commit failed")
	}
	remove()
	for start := time.Now(); layers() > 0; time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("%d layer files of the deleted volume stay after the disk recovered", layers())
		}
	}
}
