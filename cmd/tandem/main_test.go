package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCLIErrors(t *testing.T) {
	var created string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			var b bytes.Buffer
			b.ReadFrom(r.Body)
			created = b.String()
			w.WriteHeader(201)
			w.Write([]byte(`{"name":"v","size":1073741824,"url":"iscsi://x/y/0"}`))
			return
		}
		w.WriteHeader(404)
		w.Write([]byte(`{"error":"volume \"zz\": not found"}`))
	}))
	defer srv.Close()
	tests := []struct {
		name   string
		args   []string
		code   int
		output string
	}{
		{"1 no args", nil, 0, "Usage"},
		{"2 unknown command", []string{"frob"}, 2, "unknown command"},
		{"3 create without size", []string{"--api", srv.URL, "volume", "create", "v"}, 2, "--size"},
		{"4 create bad size", []string{"--api", srv.URL, "volume", "create", "v", "--size", "big"}, 2, "GiB"},
		{"5 create flags after name", []string{"--api", srv.URL, "volume", "create", "v", "--size", "1GiB", "--allow", "iqn.a", "--allow", "iqn.b"}, 0, "created volume v"},
		{"6 server error passed on", []string{"--api", srv.URL, "volume", "show", "zz"}, 1, "not found"},
		{"7 no server", []string{"--api", "http://127.0.0.1:1", "volume", "list"}, 1, "tandem serve"},
		{"8 volume without sub", []string{"volume"}, 2, "subcommand"},
		{"9 serve bad log level", []string{"serve", "--log-level", "loud"}, 2, "log-level"},
		{"10 serve positional", []string{"serve", "extra"}, 2, "no arguments"},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.output) {
			t.Errorf("%s: exit %d, want %d; output %q", tc.name, code, tc.code, out.String()+errb.String())
		}
	}
	if !strings.Contains(created, `"allow":["iqn.a","iqn.b"]`) || !strings.Contains(created, `"size":"1GiB"`) {
		t.Errorf("create request %s", created)
	}
}
