package vfs

import (
	"errors"
	"path/filepath"
	"testing"
)

// Mem.Data behaves as SEEK_DATA/SEEK_HOLE at the end of a file whose size
// is not a whole page: ErrNoData past the size, and a punch reaching the
// end of the file frees the last partial page, as ext4 does. (Found in
// review.)
func TestMemDataPastEOFInLastPage(t *testing.T) {
	check := func(fs FS, dir string) (int64, int64, error) {
		f, err := fs.Create(filepath.Join(dir, "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		f.WriteAt(make([]byte, 6000), 0) // pages 0 and 1; size 6000
		return f.Data(7000)
	}
	m := NewMem()
	m.MkdirAll("/d")
	ms, me, merr := check(m, "/d")
	_, _, oerr := check(OS{}, t.TempDir())
	if !errors.Is(oerr, ErrNoData) {
		t.Skipf("the OS answers %v", oerr)
	}
	if !errors.Is(merr, ErrNoData) {
		t.Fatalf("Mem.Data(7000) on a 6000-byte file: [%d, %d) %v; the OS: ErrNoData", ms, me, merr)
	}
}
