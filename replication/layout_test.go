package replication

import (
	"strings"
	"testing"
)

func TestParseLayout(t *testing.T) {
	tests := []struct {
		in   string
		want string
		err  string
	}{
		{"mirror:2", "mirror:2", ""},
		{"mirror:1", "mirror:1", ""},
		{"mirror:5", "mirror:5", ""},
		{"mirror:0", "", "1 to 5"},
		{"mirror:6", "", "1 to 5"},
		{"mirror:x", "", "1 to 5"},
		{"ec:4+2", "", "not built yet"},
		{"ec:4", "", "ec:K+M"},
		{"raid5", "", "use mirror:N"},
		{"", "", "use mirror:N"},
	}
	for _, tc := range tests {
		l, err := ParseLayout(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || l.String() != tc.want || l.Nodes() != l.Copies {
			t.Errorf("%q: %v %v", tc.in, l, err)
		}
	}
}
