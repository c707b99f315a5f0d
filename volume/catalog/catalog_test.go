package catalog

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
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
	if err := c.Apply(Changes{PutVolumes: []Volume{{Name: "a", ID: "1", Size: 4096}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReservations("1", []byte("state")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v", err)
	}
	c.Close()
	c, _ = Open(path, Options{})
	l, err := c.List()
	if err != nil || len(l) != 1 || l[0].Volume.ID != "1" {
		t.Fatalf("%v %v", l, err)
	}
	if err := c.Apply(Changes{DeleteVolumes: []string{"a"}, DropVolumeState: []string{"1"}}); err != nil {
		t.Fatal(err)
	}
	if l, _ := c.List(); len(l) != 0 {
		t.Fatalf("deleted volume still listed: %v", l)
	}
	if r, _ := c.Reservations("1"); len(r) != 0 {
		t.Fatalf("reservations of a deleted volume kept: %q", r)
	}
	c.Close()
}

// A commit refused before it is written changes nothing and the catalog
// goes on; one that fails after it was written (the outcome unknown) makes
// every later commit fail until the catalog is reopened.
func TestCommitOutcomes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.db")
	var before, after error
	opts := Options{BeforeCommit: func() error { return before }, AfterCommit: func() error { return after }}
	c, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	put := func(name string) error {
		return c.Apply(Changes{PutVolumes: []Volume{{Name: name, ID: name, Size: 4096}}})
	}
	before = errors.New("refused")
	if err := put("a"); err == nil || errors.Is(err, ErrUncertain) {
		t.Fatalf("refused commit: %v", err)
	}
	before = nil
	if err := put("b"); err != nil {
		t.Fatalf("commit after a refused one: %v", err)
	}
	after = errors.New("fdatasync: input/output error")
	if err := put("c"); !errors.Is(err, ErrUncertain) {
		t.Fatalf("commit failing after it was written: %v", err)
	}
	after = nil
	if err := put("d"); !errors.Is(err, ErrUncertain) {
		t.Fatalf("commit after an uncertain one: %v", err)
	}
	if err := c.SetReservations("b", []byte("x")); !errors.Is(err, ErrUncertain) {
		t.Fatalf("reservations after an uncertain commit: %v", err)
	}
	c.Close()
	c, _ = Open(path, Options{})
	defer c.Close()
	l, _ := c.List()
	var names []string
	for _, e := range l {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "b,c" {
		t.Fatalf("after reopening: %v (b, and c whose commit did reach the file)", names)
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

func TestDecodeLayer(t *testing.T) {
	tests := []struct {
		rec string
		ok  bool
	}{
		{`{"id":"a","volume":"v","path":"layers/a.layer","size":4096}`, true},
		{`{"id":"a","volume":"v","path":"volumes/v/head.layer","size":1048576,"parent":"b","snapshot":"s"}`, true},
		{`{"id":"a","volume":"v","path":"layers/a.layer","size":0}`, false},
		{`{"id":"a","volume":"v","path":"layers/a.layer","size":1000}`, false},
		{`{"id":"a","volume":"v","path":"/etc/passwd","size":4096}`, false},
		{`{"id":"a","volume":"v","path":"../../x","size":4096}`, false},
		{`{"id":"a","volume":"v","path":"","size":4096}`, false},
		{`{"volume":"v","path":"layers/a.layer","size":4096}`, false},
		{`{"id":"a","path":"layers/a.layer","size":4096}`, false},
		{`not json`, false},
	}
	for i, tc := range tests {
		if _, err := DecodeLayer([]byte(tc.rec)); (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%d %s: %v", i+1, tc.rec, err)
		}
	}
}

func FuzzDecodeLayer(f *testing.F) {
	good, _ := json.Marshal(Layer{ID: "a", Volume: "v", Path: "layers/a.layer", Size: 4096})
	f.Add(good)
	f.Add([]byte(`{"id":"a","path":"../x","size":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := DecodeLayer(b)
		if err == nil && (l.ID == "" || l.Size <= 0 || l.Size%4096 != 0 || filepath.IsAbs(l.Path) || strings.Contains(l.Path, "..")) {
			t.Fatalf("invalid record accepted: %+v", l)
		}
	})
}
