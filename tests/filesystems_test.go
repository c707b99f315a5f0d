package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mountImage makes a file system of the given type in an image file,
// loop-mounts it with opts and returns the mount point (unmounted at the
// end). It skips the test where loop mounts are not allowed (not root).
func mountImage(t *testing.T, mkfs []string, opts string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop mounts need root")
	}
	requireTool(t, mkfs[0], "mount", "umount")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 256<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs[0], append(mkfs[1:], img)...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(mkfs, " "), err, out)
	}
	os.Mkdir(mnt, 0o700)
	args := []string{"-o", "loop"}
	if opts != "" {
		args = []string{"-o", "loop," + opts}
	}
	if out, err := exec.Command("mount", append(args, img, mnt)...).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount here: %v %s", err, out)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			if exec.Command("umount", mnt).Run() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("could not unmount %s", mnt)
	})
	return mnt
}

// Issue 8, defect 5: layers rely on the file system allocating a block
// only with its data (ext4 data=ordered) and reporting allocation at 4 KiB.
// A data directory on ext4 mounted data=writeback is refused at start with
// a message that says what to do; ext4 with bigalloc (64 KiB clusters, but
// allocation still reported per block) is served.
func TestDataDirFileSystemCheck(t *testing.T) {
	t.Run("ext4 data=writeback refused", func(t *testing.T) {
		mnt := mountImage(t, []string{"mkfs.ext4", "-q", "-F"}, "data=writeback")
		out, err := exec.Command(tandemBin, "serve", "--data", filepath.Join(mnt, "data"), "--portal", freePort(t), "--api", freePort(t)).CombinedOutput()
		if err == nil {
			t.Fatalf("tandem serve started on ext4 data=writeback:\n%s", out)
		}
		if !strings.Contains(string(out), "data=writeback") || !strings.Contains(string(out), "data=ordered") {
			t.Fatalf("the refusal does not say why and what to do:\n%s", out)
		}
	})
	t.Run("ext4 bigalloc served", func(t *testing.T) {
		requireTool(t, "qemu-io")
		mnt := mountImage(t, []string{"mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "bigalloc", "-C", "65536"}, "")
		n := &node{t: t, data: filepath.Join(mnt, "data"), portal: freePort(t), api: freePort(t), strictFS: true, name: "e2e", gossip: freeGossipPort(t, "127.0.0.1"), link: freePort(t)}
		n.start()
		t.Cleanup(n.stop)
		n.mustCLI("volume", "create", "v", "--size", "16MiB")
		if out, err := run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 7 4096 8192", "-c", "flush", "-c", "read -P 7 4096 8192", n.url("v")); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	})
}
