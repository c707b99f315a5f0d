package vfs

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// Mem is an in-memory file system that can lose power. It keeps, for every
// file, what a disk holds (the state at the last Sync) and what the page
// cache holds (everything since), and for every directory its entries as
// of the last SyncDir. Restart after a power cut keeps the synced state and,
// given a random source, whatever a real disk might also have kept of the
// rest: for each 4 KiB page one of the images it had since the last sync,
// with an overwrite of an allocated page possibly torn at a 512-byte
// sector; a page newly allocated is all there or not at all (ext4's
// data=ordered), which CheckAllocation makes OS insist on.
//
// PowerCutAfter plans a cut: after that many more operations that change
// the disk (writes, punches, truncates, syncs, creates, removes, catalog
// commits), every operation fails with ErrPowerLost, as on a machine whose
// power went off, until Restart.
type Mem struct {
	mu      sync.Mutex
	dirs    map[string]bool
	files   map[string]*inode // names as the running system sees them
	durable map[string]*inode // names as the disk has them
	gen     uint64            // bumped by Restart: older handles are dead
	left    int64             // operations before the planned cut; -1: none
	dead    bool
	ops     int64 // operations that changed the disk, since New
}

// ErrPowerLost is what every operation returns after a power cut.
var ErrPowerLost = errors.New("power lost")

const (
	pageSize   = 4096
	sectorSize = 512
)

type page = [pageSize]byte

// inode is one file's content: current (pages, size), on disk (dpages,
// dsize), and the history of each page and of the size since the last sync.
type inode struct {
	size   int64
	pages  map[int64]*page
	dsize  int64
	dpages map[int64]*page
	hist   map[int64][]*page // images since the last sync, nil for a hole
	sizes  []int64           // sizes since the last sync
}

// NewMem returns an empty in-memory file system with no cut planned.
func NewMem() *Mem {
	return &Mem{dirs: map[string]bool{"/": true, ".": true}, files: map[string]*inode{}, durable: map[string]*inode{}, left: -1}
}

var (
	_ FS        = (*Mem)(nil)
	_ Committer = (*Mem)(nil)
)

// PowerCutAfter plans a power cut after n more operations that change the
// disk (n = 0: the next one fails).
func (m *Mem) PowerCutAfter(n int64) {
	m.mu.Lock()
	m.left = n
	m.mu.Unlock()
}

// Ops is the number of operations that changed the disk since NewMem.
func (m *Mem) Ops() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ops
}

// PowerLost reports whether the power is off (a cut happened, no Restart
// yet).
func (m *Mem) PowerLost() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dead
}

// step accounts for one operation that changes the disk. Called with mu
// held.
func (m *Mem) step(op, name string) error {
	if m.dead {
		return &os.PathError{Op: op, Path: name, Err: ErrPowerLost}
	}
	if m.left == 0 {
		m.dead = true
		return &os.PathError{Op: op, Path: name, Err: ErrPowerLost}
	}
	if m.left > 0 {
		m.left--
	}
	m.ops++
	return nil
}

func (m *Mem) alive(op, name string) error {
	if m.dead {
		return &os.PathError{Op: op, Path: name, Err: ErrPowerLost}
	}
	return nil
}

// Restart powers the machine back on after a cut (or cuts the power now
// and restarts): open files are gone, every file holds what the disk kept.
// With rng nil the disk kept exactly what was synced; otherwise, in
// addition, a random choice of what a disk may have written on its own.
func (m *Mem) Restart(rng *rand.Rand) {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := map[string]*inode{}
	for n, ino := range m.durable {
		if _, still := m.files[n]; !still && rng != nil && rng.Intn(2) == 0 {
			continue // the removal reached the disk anyway
		}
		names[n] = ino
	}
	if rng != nil {
		for n, ino := range m.files {
			if _, ok := m.durable[n]; !ok && rng.Intn(2) == 0 {
				names[n] = ino // the creation reached the disk anyway
			}
		}
	}
	done := map[*inode]bool{}
	for _, ino := range names {
		if !done[ino] {
			done[ino] = true
			ino.crash(rng)
		}
	}
	m.files = names
	m.durable = copyNames(names)
	m.gen++
	m.dead = false
	m.left = -1
}

func copyNames(in map[string]*inode) map[string]*inode {
	out := make(map[string]*inode, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// crash makes the inode what the disk kept.
func (ino *inode) crash(rng *rand.Rand) {
	size := ino.dsize
	pages := make(map[int64]*page, len(ino.dpages))
	for p, img := range ino.dpages {
		pages[p] = img
	}
	if rng != nil {
		if k := rng.Intn(len(ino.sizes) + 1); k > 0 {
			size = ino.sizes[k-1]
		}
		for _, p := range sortedKeys(ino.hist) {
			h := ino.hist[p]
			k := rng.Intn(len(h) + 1)
			if k == 0 {
				continue
			}
			img, base := h[k-1], pages[p]
			switch {
			case img == nil:
				delete(pages, p)
			case base != nil && rng.Intn(4) == 0:
				// An overwrite torn at a sector boundary.
				torn := *base
				cut := sectorSize * (1 + rng.Intn(pageSize/sectorSize-1))
				copy(torn[:cut], img[:cut])
				pages[p] = &torn
			default:
				pages[p] = img
			}
		}
	}
	for p := range pages {
		if p*pageSize >= size {
			delete(pages, p)
		}
	}
	ino.size, ino.dsize = size, size
	ino.pages, ino.dpages = pages, clonePages(pages)
	ino.hist, ino.sizes = nil, nil
}

func sortedKeys[V any](m map[int64]V) []int64 {
	keys := make([]int64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func clonePages(in map[int64]*page) map[int64]*page {
	out := make(map[int64]*page, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

func (ino *inode) sync() {
	ino.dsize = ino.size
	ino.dpages = clonePages(ino.pages)
	ino.hist, ino.sizes = nil, nil
}

// setPage records a new image of page p (nil: a hole).
func (ino *inode) setPage(p int64, img *page) {
	if img == nil {
		delete(ino.pages, p)
	} else {
		ino.pages[p] = img
	}
	if ino.hist == nil {
		ino.hist = map[int64][]*page{}
	}
	ino.hist[p] = append(ino.hist[p], img)
}

func (ino *inode) setSize(n int64) {
	ino.size = n
	ino.sizes = append(ino.sizes, n)
}

func clean(name string) string { return filepath.Clean(name) }

// Create implements FS.
func (m *Mem) Create(name string) (File, error) {
	name = clean(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.step("create", name); err != nil {
		return nil, err
	}
	if !m.dirs[filepath.Dir(name)] {
		return nil, &os.PathError{Op: "create", Path: name, Err: os.ErrNotExist}
	}
	if _, ok := m.files[name]; ok || m.dirs[name] {
		return nil, &os.PathError{Op: "create", Path: name, Err: os.ErrExist}
	}
	ino := &inode{pages: map[int64]*page{}, dpages: map[int64]*page{}}
	m.files[name] = ino
	return &memFile{m: m, ino: ino, name: name, gen: m.gen, writable: true}, nil
}

// Open implements FS.
func (m *Mem) Open(name string, writable bool) (File, error) {
	name = clean(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.alive("open", name); err != nil {
		return nil, err
	}
	ino, ok := m.files[name]
	if !ok {
		return nil, &os.PathError{Op: "open", Path: name, Err: os.ErrNotExist}
	}
	return &memFile{m: m, ino: ino, name: name, gen: m.gen, writable: writable}, nil
}

// Remove implements FS.
func (m *Mem) Remove(name string) error {
	name = clean(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.step("remove", name); err != nil {
		return err
	}
	if _, ok := m.files[name]; ok {
		delete(m.files, name)
		return nil
	}
	if m.dirs[name] {
		for f := range m.files {
			if strings.HasPrefix(f, name+"/") {
				return &os.PathError{Op: "remove", Path: name, Err: syscall.ENOTEMPTY}
			}
		}
		delete(m.dirs, name)
		return nil
	}
	return &os.PathError{Op: "remove", Path: name, Err: os.ErrNotExist}
}

// RemoveAll implements FS.
func (m *Mem) RemoveAll(name string) error {
	name = clean(name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.step("removeall", name); err != nil {
		return err
	}
	for f := range m.files {
		if f == name || strings.HasPrefix(f, name+"/") {
			delete(m.files, f)
		}
	}
	for d := range m.dirs {
		if d == name || strings.HasPrefix(d, name+"/") {
			delete(m.dirs, d)
		}
	}
	return nil
}

// MkdirAll implements FS. Directories, once made, survive power cuts.
func (m *Mem) MkdirAll(dir string) error {
	dir = clean(dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.alive("mkdir", dir); err != nil {
		return err
	}
	for d := dir; !m.dirs[d]; d = filepath.Dir(d) {
		if _, ok := m.files[d]; ok {
			return &os.PathError{Op: "mkdir", Path: d, Err: syscall.ENOTDIR}
		}
		m.dirs[d] = true
	}
	return nil
}

// ReadDir implements FS.
func (m *Mem) ReadDir(dir string) ([]Entry, error) {
	dir = clean(dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.alive("readdir", dir); err != nil {
		return nil, err
	}
	if !m.dirs[dir] {
		return nil, &os.PathError{Op: "readdir", Path: dir, Err: os.ErrNotExist}
	}
	var out []Entry
	for f := range m.files {
		if filepath.Dir(f) == dir {
			out = append(out, Entry{Name: filepath.Base(f)})
		}
	}
	for d := range m.dirs {
		if d != dir && filepath.Dir(d) == dir {
			out = append(out, Entry{Name: filepath.Base(d), IsDir: true})
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// SyncDir implements FS.
func (m *Mem) SyncDir(dir string) error {
	dir = clean(dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.step("syncdir", dir); err != nil {
		return err
	}
	for n := range m.durable {
		if filepath.Dir(n) == dir {
			if _, ok := m.files[n]; !ok {
				delete(m.durable, n)
			}
		}
	}
	for n, ino := range m.files {
		if filepath.Dir(n) == dir {
			m.durable[n] = ino
		}
	}
	return nil
}

// CheckAllocation implements FS: Mem keeps allocation exactly.
func (m *Mem) CheckAllocation(dir string) error { return probe(m, dir) }

// BeforeCommit implements Committer: a catalog commit is one operation.
func (m *Mem) BeforeCommit() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.step("catalog commit", "catalog")
}

// AfterCommit implements Committer: the power can go right after a commit
// reached the disk, before the process hears of it.
func (m *Mem) AfterCommit() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.step("catalog commit written", "catalog")
}

// memFile is an open file of a Mem.
type memFile struct {
	m        *Mem
	ino      *inode
	name     string
	gen      uint64
	writable bool
	closed   bool
}

// check returns an error if the handle cannot be used; called with m.mu held.
func (f *memFile) check(op string, write bool) error {
	switch {
	case f.m.dead || f.gen != f.m.gen:
		return &os.PathError{Op: op, Path: f.name, Err: ErrPowerLost}
	case f.closed:
		return &os.PathError{Op: op, Path: f.name, Err: os.ErrClosed}
	case write && !f.writable:
		return &os.PathError{Op: op, Path: f.name, Err: syscall.EBADF}
	}
	return nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check("read", false); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, &os.PathError{Op: "read", Path: f.name, Err: syscall.EINVAL}
	}
	n := 0
	for n < len(p) && off+int64(n) < f.ino.size {
		pos := off + int64(n)
		pg, in := pos/pageSize, pos%pageSize
		k := int(min(int64(len(p)-n), pageSize-in, f.ino.size-pos))
		if img := f.ino.pages[pg]; img != nil {
			copy(p[n:n+k], img[in:])
		} else {
			clear(p[n : n+k])
		}
		n += k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check("write", true); err != nil {
		return 0, err
	}
	if err := f.m.step("write", f.name); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, &os.PathError{Op: "write", Path: f.name, Err: syscall.EINVAL}
	}
	for n := 0; n < len(p); {
		pos := off + int64(n)
		pg, in := pos/pageSize, pos%pageSize
		k := int(min(int64(len(p)-n), pageSize-in))
		img := new(page)
		if old := f.ino.pages[pg]; old != nil {
			*img = *old
		}
		copy(img[in:], p[n:n+k])
		f.ino.setPage(pg, img)
		n += k
	}
	if end := off + int64(len(p)); end > f.ino.size {
		f.ino.setSize(end)
	}
	return len(p), nil
}

func (f *memFile) Size() (int64, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check("stat", false); err != nil {
		return 0, err
	}
	return f.ino.size, nil
}

func (f *memFile) Truncate(size int64) error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check("truncate", true); err != nil {
		return err
	}
	if err := f.m.step("truncate", f.name); err != nil {
		return err
	}
	if size < f.ino.size {
		for p := range f.ino.pages {
			if p*pageSize >= size {
				f.ino.setPage(p, nil)
			}
		}
		if in := size % pageSize; in != 0 {
			if old := f.ino.pages[size/pageSize]; old != nil {
				img := *old
				clear(img[in:])
				f.ino.setPage(size/pageSize, &img)
			}
		}
	}
	f.ino.setSize(size)
	return nil
}

func (f *memFile) Sync() error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check("fdatasync", false); err != nil {
		return err
	}
	if err := f.m.step("fdatasync", f.name); err != nil {
		return err
	}
	f.ino.sync()
	return nil
}

func (f *memFile) Punch(off, n int64) error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check("punch hole", true); err != nil {
		return err
	}
	if err := f.m.step("punch hole", f.name); err != nil {
		return err
	}
	end := min(off+n, f.ino.size)
	for pos := off; pos < end; {
		pg, in := pos/pageSize, pos%pageSize
		k := min(end-pos, pageSize-in)
		if old := f.ino.pages[pg]; old != nil {
			// A page punched whole, or from its start to the end of the
			// file, is freed (as ext4 frees the last block).
			if k == pageSize || in == 0 && pos+k == f.ino.size {
				f.ino.setPage(pg, nil)
			} else {
				img := *old
				clear(img[in : in+k])
				f.ino.setPage(pg, &img)
			}
		}
		pos += k
	}
	return nil
}

func (f *memFile) Data(off int64) (int64, int64, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check("seek data", false); err != nil {
		return 0, 0, err
	}
	if off >= f.ino.size {
		return 0, 0, ErrNoData
	}
	for _, p := range sortedKeys(f.ino.pages) {
		if (p+1)*pageSize <= off || p*pageSize >= f.ino.size {
			continue
		}
		last := p
		for f.ino.pages[last+1] != nil && (last+1)*pageSize < f.ino.size {
			last++
		}
		return max(p*pageSize, off), min((last+1)*pageSize, f.ino.size), nil
	}
	return 0, 0, ErrNoData
}

func (f *memFile) Allocated() (int64, error) {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if err := f.check("stat", false); err != nil {
		return 0, err
	}
	return int64(len(f.ino.pages)) * pageSize, nil
}

func (f *memFile) Close() error {
	f.m.mu.Lock()
	defer f.m.mu.Unlock()
	if f.closed {
		return &os.PathError{Op: "close", Path: f.name, Err: os.ErrClosed}
	}
	f.closed = true
	return nil
}

// String describes the file system for test failures.
func (m *Mem) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fmt.Sprintf("vfs.Mem{%d files, %d on disk, %d ops}", len(m.files), len(m.durable), m.ops)
}
