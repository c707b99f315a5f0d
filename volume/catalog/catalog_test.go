package catalog

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
)

func TestDecodeVolume(t *testing.T) {
	good, _ := json.Marshal(Volume{Version: 1, Name: "a", ID: "x", Size: 4096})
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"1 good", string(good), true},
		{"2 not json", "{", false},
		{"3 wrong version", `{"version":9,"name":"a","id":"x","size":4096}`, false},
		{"4 no name", `{"version":1,"id":"x","size":4096}`, false},
		{"5 zero size", `{"version":1,"name":"a","id":"x","size":0}`, false},
	}
	for _, tc := range tests {
		_, err := DecodeVolume([]byte(tc.in))
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrCorrupt)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestCatalog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	c, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create(Volume{Name: "a", ID: "1", Size: 4096}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(Volume{Name: "a", ID: "2", Size: 4096}); !errors.Is(err, ErrExists) {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v", err)
	}
	c.Close()
	c, _ = Open(path, Options{})
	defer c.Close()
	l, err := c.List()
	if err != nil || len(l) != 1 || l[0].Volume.ID != "1" {
		t.Fatalf("%v %v", l, err)
	}
	if err := c.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("a"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
}

func FuzzDecodeVolume(f *testing.F) {
	good, _ := json.Marshal(Volume{Version: 1, Name: "a", ID: "x", Size: 4096, Export: Export{Allow: []string{"iqn.x"}}})
	f.Add(good)
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := DecodeVolume(b)
		if err == nil && (v.Name == "" || v.Size <= 0) {
			t.Fatalf("invalid record accepted: %+v", v)
		}
	})
}
