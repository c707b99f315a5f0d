package appliance

import (
	"testing"

	"tandem.io/tandem/appliance/membership"
)

func TestMetaChanged(t *testing.T) {
	base := membership.Meta{Role: "data", Link: "a:1", Portal: "a:2", API: "a:3", Cluster: "c", CapacityBytes: 100 << 30, FreeBytes: 50 << 30}
	tests := []struct {
		name string
		mod  func(m *membership.Meta)
		want bool
	}{
		{"same", func(m *membership.Meta) {}, false},
		{"a few blocks written", func(m *membership.Meta) { m.FreeBytes -= 10 << 20 }, false},
		{"1% of the capacity used", func(m *membership.Meta) { m.FreeBytes -= 2 << 30 }, true},
		{"space freed", func(m *membership.Meta) { m.FreeBytes += 2 << 30 }, true},
		{"cluster named", func(m *membership.Meta) { m.Cluster = "d" }, true},
		{"portal moved", func(m *membership.Meta) { m.Portal = "b:2" }, true},
	}
	for _, tc := range tests {
		m := base
		tc.mod(&m)
		if got := metaChanged(base, m); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
