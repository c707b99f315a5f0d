package membership

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

var validMetas = []Meta{
	{Role: RoleData, Link: "10.0.0.1:7482", Portal: "10.0.0.1:3260", API: "10.0.0.1:7480", Cluster: "c0ffee", CapacityBytes: 1 << 40, FreeBytes: 1 << 39},
	{Role: RoleWitness, Link: "[fd00::1]:7482"},
	{Role: RoleData, Link: "node-1.example:7482", CapacityBytes: math.MaxInt64, FreeBytes: math.MaxInt64},
	{Role: RoleWitness, Cluster: strings.Repeat("c", maxClusterLen)},
}

func TestMetaRoundTrip(t *testing.T) {
	for i, m := range validMetas {
		b, err := m.marshal()
		if err != nil {
			t.Fatalf("%d: marshal %+v: %v", i, m, err)
		}
		got, err := parseMeta(b)
		if err != nil || got != m {
			t.Errorf("%d: parse(marshal(%+v)) = %+v, %v", i, m, got, err)
		}
		// A later version may append fields.
		got, err = parseMeta(append(b, 0xff, 0x01))
		if err != nil || got != m {
			t.Errorf("%d: with trailing bytes: %+v, %v", i, got, err)
		}
	}
}

func TestMetaInvalid(t *testing.T) {
	ok := validMetas[0]
	long := "h" + strings.Repeat("o", maxAddrLen) + ":1"
	for i, tc := range []struct {
		edit func(*Meta)
		want error
	}{
		{func(m *Meta) { m.Role = "" }, ErrInvalidMeta},
		{func(m *Meta) { m.Role = "arbiter" }, ErrInvalidMeta},
		{func(m *Meta) { m.Link = "10.0.0.1" }, ErrInvalidMeta},
		{func(m *Meta) { m.Portal = ":3260" }, ErrInvalidMeta},
		{func(m *Meta) { m.API = "10.0.0.1:0" }, ErrInvalidMeta},
		{func(m *Meta) { m.API = "10.0.0.1:65536" }, ErrInvalidMeta},
		{func(m *Meta) { m.Link = "a b:1" }, ErrInvalidMeta},
		{func(m *Meta) { m.Link = long }, ErrInvalidMeta},
		{func(m *Meta) { m.Cluster = strings.Repeat("c", maxClusterLen+1) }, ErrInvalidMeta},
		{func(m *Meta) { m.Cluster = "c\n" }, ErrInvalidMeta},
		{func(m *Meta) { m.CapacityBytes = -1 }, ErrInvalidMeta},
		{func(m *Meta) { m.FreeBytes = -1 }, ErrInvalidMeta},
		{func(m *Meta) { m.FreeBytes = m.CapacityBytes + 1 }, ErrInvalidMeta},
		// Each address fits, together they do not.
		{func(m *Meta) {
			a := strings.Repeat("h", maxAddrLen-2) + ":1"
			m.Link, m.Portal, m.API = a, a, a
		}, ErrMetaTooLarge},
	} {
		m := ok
		tc.edit(&m)
		if _, err := m.marshal(); !errors.Is(err, tc.want) {
			t.Errorf("%d: marshal %+v: %v, want %v", i, m, err, tc.want)
		}
	}
}

func TestParseMetaInvalid(t *testing.T) {
	good, err := validMetas[0].marshal()
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		p    []byte
		want error
	}{
		{nil, ErrInvalidMeta},
		{[]byte{2}, ErrInvalidMeta},                                         // unknown version
		{[]byte{metaVersion}, ErrInvalidMeta},                               // no fields
		{good[:len(good)-1], ErrInvalidMeta},                                // truncated
		{[]byte{metaVersion, 0x80}, ErrInvalidMeta},                         // truncated varint
		{[]byte{metaVersion, 0xff, 0xff, 0xff, 0xff, 0x0f}, ErrInvalidMeta}, // length beyond the input
		{append([]byte{metaVersion, 4}, "data"...), ErrInvalidMeta},         // missing fields
		{append(append([]byte{metaVersion, 4}, "data"...), 0, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0), ErrInvalidMeta}, // capacity > MaxInt64
		{append(append([]byte{metaVersion, 4}, "data"...), 0, 0, 0, 0, 1, 2), ErrInvalidMeta},                                                          // free > capacity
		{append(append([]byte{metaVersion, 4}, "root"...), 0, 0, 0, 0, 0, 0), ErrInvalidMeta},                                                          // unknown role
		{bytes.Repeat([]byte{metaVersion}, 513), ErrMetaTooLarge},
	} {
		if m, err := parseMeta(tc.p); !errors.Is(err, tc.want) || m != (Meta{}) {
			t.Errorf("%d: parse % x = %+v, %v; want %v", i, tc.p, m, err, tc.want)
		}
	}
}

func FuzzParseMeta(f *testing.F) {
	for _, m := range validMetas {
		b, err := m.marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{metaVersion, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := parseMeta(p)
		if err != nil {
			return
		}
		b, err := m.marshal()
		if err != nil {
			t.Fatalf("parsed %+v does not marshal: %v", m, err)
		}
		if m2, err := parseMeta(b); err != nil || m2 != m {
			t.Fatalf("re-parse of %+v: %+v, %v", m, m2, err)
		}
	})
}

func TestParseLeaving(t *testing.T) {
	for i, tc := range []struct {
		p    []byte
		name string // "" means invalid
	}{
		{appendLeaving(nil, "node-1"), "node-1"},
		{appendLeaving(nil, strings.Repeat("n", maxNameLen)), strings.Repeat("n", maxNameLen)},
		{appendLeaving(nil, strings.Repeat("n", maxNameLen+1)), ""},
		{appendLeaving(nil, ""), ""},
		{append(appendLeaving(nil, "node-1"), 0), ""},
		{appendLeaving(nil, "node-1")[:4], ""},
		{nil, ""},
		{[]byte{2, 1, 'a'}, ""},
		{[]byte{msgLeaving, 0x80}, ""},
	} {
		name, err := parseLeaving(tc.p)
		if name != tc.name || (err == nil) != (tc.name != "") || err != nil && !errors.Is(err, ErrInvalidMsg) {
			t.Errorf("%d: parse % x = %q, %v; want %q", i, tc.p, name, err, tc.name)
		}
	}
}

func FuzzParseLeaving(f *testing.F) {
	f.Add(appendLeaving(nil, "node-1"))
	f.Add([]byte{msgLeaving, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, p []byte) {
		name, err := parseLeaving(p)
		if err != nil {
			return
		}
		if again, err := parseLeaving(appendLeaving(nil, name)); err != nil || again != name {
			t.Fatalf("%q (from % x) re-parses as %q, %v", name, p, again, err)
		}
	})
}
