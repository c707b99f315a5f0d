package tests

import (
	"os/exec"
	"path/filepath"
	"testing"

	"tandem.io/tandem/volume/vfs"
)

// ext4 shows in /proc/self/mountinfo only the options that differ from the
// superblock's defaults, and an ext4 without a journal has no data= mode
// at all; both let a block be allocated before its data is on disk. The
// check reads the effective mode (/proc/fs/ext4/<dev>/options) and refuses
// both. (Found in review: both passed.)
func TestExt4WithoutOrderedDataIsRefused(t *testing.T) {
	t.Run("data=writeback as the superblock default", func(t *testing.T) {
		requireTool(t, "tune2fs")
		mnt := mountImage(t, []string{"sh", "-c", `mkfs.ext4 -q -F "$0" && tune2fs -o journal_data_writeback "$0" >/dev/null`}, "")
		if err := (vfs.OS{}).CheckAllocation(filepath.Join(mnt)); err == nil {
			out, _ := exec.Command("grep", mnt, "/proc/self/mountinfo").CombinedOutput()
			t.Fatalf("ext4 in data=writeback mode (set with tune2fs -o journal_data_writeback) passes the check; mountinfo: %s", out)
		}
	})
	t.Run("no journal", func(t *testing.T) {
		mnt := mountImage(t, []string{"mkfs.ext4", "-q", "-F", "-O", "^has_journal"}, "")
		if err := (vfs.OS{}).CheckAllocation(mnt); err == nil {
			t.Fatal("ext4 without a journal (no ordering of data before allocation) passes the check")
		}
	})
}
