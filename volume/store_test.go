package volume

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"tandem.io/tandem/volume/block"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1", 1, true}, {"10GiB", 10 << 30, true}, {"10G", 10 << 30, true}, {"512MiB", 512 << 20, true},
		{"1TiB", 1 << 40, true}, {"4096", 4096, true}, {"1gib", 1 << 30, true}, {" 2 MiB", 2 << 20, true},
		{"", 0, false}, {"GiB", 0, false}, {"1.5GiB", 0, false}, {"10XB", 0, false}, {"-1", 0, false},
		{"65TiB", 0, false}, {"99999999999999999999", 0, false},
	}
	for i, tc := range tests {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("%d %q: %d %v", i+1, tc.in, got, err)
		}
	}
}

func TestValidation(t *testing.T) {
	names := map[string]bool{"demo": true, "a": true, "vm-1.disk": true, "Demo": false, "-x": false, "": false,
		"a_b": false, string(make([]byte, 64)): false, "x/y": false}
	for n, ok := range names {
		if err := ValidateName(n); (err == nil) != ok || (err != nil && !errors.Is(err, ErrInvalidName)) {
			t.Errorf("name %q: %v", n, err)
		}
	}
	sizes := map[int64]bool{1 << 20: true, 1<<20 + 512: false, 4096: false, 64 << 40: true, 64<<40 + 4096: false}
	for n, ok := range sizes {
		if err := ValidateSize(n); (err == nil) != ok {
			t.Errorf("size %d: %v", n, err)
		}
	}
}

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Dir: dir, AllowCrashUnsafe: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreLifecycle(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := open(t, dir)
	a, err := s.Create(ctx, Spec{Name: "a", Size: 8 << 20, Export: Export{CHAPUser: "u", CHAPSecret: "s", Allow: []string{"iqn.x"}}})
	if err != nil {
		t.Fatal(err)
	}
	if a.NAA[0]>>4 != 6 || a.Serial == "" || a.ID == "" || a.AllocatedBytes != 0 {
		t.Fatalf("info %+v", a)
	}
	if _, err := s.Create(ctx, Spec{Name: "a", Size: 8 << 20}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := s.Create(ctx, Spec{Name: "b", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	dev, _ := s.Device("a")
	if err := dev.WriteAt(ctx, bytes.Repeat([]byte{9}, 8192), 4096, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Everything survives a reopen, identities included.
	s = open(t, dir)
	defer s.Close()
	got, err := s.Get("a")
	if err != nil || got.NAA != a.NAA || got.Serial != a.Serial || got.Export.CHAPSecret != "s" || got.AllocatedBytes < 8192 {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
	if l := s.List(); len(l) != 2 || l[0].Name != "a" || l[1].Name != "b" {
		t.Fatalf("list %+v", l)
	}
	dev, _ = s.Device("a")
	buf := make([]byte, 8192)
	dev.ReadAt(ctx, buf, 4096)
	if !bytes.Equal(buf, bytes.Repeat([]byte{9}, 8192)) {
		t.Fatal("data lost across reopen")
	}
	if err := s.Delete(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	if err := dev.ReadAt(ctx, buf, 0); !errors.Is(err, block.ErrClosed) {
		t.Fatalf("I/O after delete: %v", err)
	}
	if _, err := s.Get("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "volumes", a.ID)); !os.IsNotExist(err) {
		t.Fatal("files left after delete")
	}
}

func TestDeviceIO(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	defer s.Close()
	s.Create(ctx, Spec{Name: "v", Size: 16 << 20})
	dev, _ := s.Device("v")
	if err := dev.WriteAt(ctx, make([]byte, 512), 16<<20, false); !errors.Is(err, block.ErrOutOfRange) {
		t.Fatalf("write past end: %v", err)
	}
	// Concurrent writers to disjoint ranges and readers.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i + 1)}, 64<<10)
			for j := 0; j < 16; j++ {
				dev.WriteAt(ctx, p, int64(i)<<20+int64(j)<<16, j%4 == 0)
				dev.ReadAt(ctx, make([]byte, 4096), int64(i)<<20)
			}
		}(i)
	}
	wg.Wait()
	got := make([]byte, 1<<20)
	dev.ReadAt(ctx, got, 3<<20)
	if !bytes.Equal(got, bytes.Repeat([]byte{4}, 1<<20)) {
		t.Fatal("concurrent writes lost data")
	}
	before := allocated(t, s, "v")
	// Unmap 1 MiB plus ragged edges: space comes back, the range reads zeros.
	if err := dev.Unmap(ctx, 3<<20-512, 1<<20+1024); err != nil {
		t.Fatal(err)
	}
	if after := allocated(t, s, "v"); after > before-(1<<20)+8192 {
		t.Fatalf("allocated %d -> %d: no space returned", before, after)
	}
	dev.ReadAt(ctx, got, 3<<20)
	if !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Fatal("unmapped range does not read as zeros")
	}
	edge := make([]byte, 512)
	dev.ReadAt(ctx, edge, 3<<20-1024)
	if !bytes.Equal(edge, bytes.Repeat([]byte{3}, 512)) {
		t.Fatal("unmap touched data outside its range")
	}
	m, n, err := dev.Mapping(ctx, 3<<20)
	if err != nil || m || n < 1<<20-4096 {
		t.Fatalf("mapping after unmap: %v %d %v", m, n, err)
	}
	m, _, _ = dev.Mapping(ctx, 1<<20)
	if !m {
		t.Fatal("written range reported unmapped")
	}
}

func TestDamagedVolumeIsIsolated(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := open(t, dir)
	bad, _ := s.Create(ctx, Spec{Name: "bad", Size: 4 << 20})
	s.Create(ctx, Spec{Name: "good", Size: 4 << 20})
	s.Close()
	// Truncate one volume's data file and leave an orphan directory.
	os.Truncate(filepath.Join(dir, "layers", bad.HeadLayer+".layer"), 1000)
	os.MkdirAll(filepath.Join(dir, "volumes", "orphan"), 0o700)
	stray := filepath.Join(dir, "layers", "0123456789abcdef.layer")
	os.WriteFile(stray, []byte("not ours"), 0o600)
	s = open(t, dir)
	defer s.Close()
	if o := s.Orphans(); len(o) != 1 || o[0] != stray {
		t.Errorf("orphans %q, want the stray layer file %s", o, stray)
	}
	b, _ := s.Get("bad")
	if b.Error == "" {
		t.Fatal("truncated volume not reported")
	}
	if _, err := s.Device("bad"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("device of damaged volume: %v", err)
	}
	if _, err := s.Device("good"); err != nil {
		t.Fatalf("healthy volume not served: %v", err)
	}
}

func TestSecondProcessRefused(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	if _, err := Open(context.Background(), Config{Dir: dir, AllowCrashUnsafe: true}); err == nil {
		t.Fatal("second open of a data dir in use succeeded")
	}
}

func BenchmarkWriteAt4K(b *testing.B) {
	ctx := context.Background()
	s, _ := Open(ctx, Config{Dir: b.TempDir(), AllowCrashUnsafe: true})
	defer s.Close()
	s.Create(ctx, Spec{Name: "v", Size: 256 << 20})
	dev, _ := s.Device("v")
	p := make([]byte, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		dev.WriteAt(ctx, p, int64(i%65536)*4096, false)
	}
}

func allocated(t *testing.T, s *Store, name string) int64 {
	t.Helper()
	i, err := s.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return i.AllocatedBytes
}
