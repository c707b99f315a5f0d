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

func TestParseMsg(t *testing.T) {
	long := strings.Repeat("n", maxNameLen)
	for i, tc := range []struct {
		p    []byte
		kind byte // 0: invalid
		name string
	}{
		{appendMsg(nil, msgLeaving, "node-1"), msgLeaving, "node-1"},
		{appendMsg(nil, msgLeavingAck, "node-2"), msgLeavingAck, "node-2"},
		{appendMsg(nil, msgLeaving, long), msgLeaving, long},
		{appendMsg(nil, msgLeaving, long+"n"), 0, ""},
		{appendMsg(nil, msgLeaving, ""), 0, ""},
		{appendMsg(nil, 3, "node-1"), 0, ""},
		{append(appendMsg(nil, msgLeaving, "node-1"), 0), 0, ""},
		{appendMsg(nil, msgLeaving, "node-1")[:4], 0, ""},
		{nil, 0, ""},
		{[]byte{msgLeaving, 0x80}, 0, ""},
		{[]byte{msgLeaving, 0xff, 0xff, 0xff, 0xff, 0x0f}, 0, ""},
	} {
		kind, name, err := parseMsg(tc.p)
		if kind != tc.kind || name != tc.name || (err == nil) != (tc.kind != 0) || err != nil && !errors.Is(err, ErrInvalidMsg) {
			t.Errorf("%d: parse % x = %d %q, %v; want %d %q", i, tc.p, kind, name, err, tc.kind, tc.name)
		}
	}
}

func FuzzParseMsg(f *testing.F) {
	f.Add(appendMsg(nil, msgLeaving, "node-1"))
	f.Add(appendMsg(nil, msgLeavingAck, "node-2"))
	f.Add([]byte{msgLeaving, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, p []byte) {
		kind, name, err := parseMsg(p)
		if err != nil {
			return
		}
		if k, n, err := parseMsg(appendMsg(nil, kind, name)); err != nil || k != kind || n != name {
			t.Fatalf("%d %q (from % x) re-parses as %d %q, %v", kind, name, p, k, n, err)
		}
	})
}
