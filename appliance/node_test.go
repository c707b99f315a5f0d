package appliance

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
)

// apiNode is a running one-node cluster on free loopback ports; its admin
// handlers are exercised through httptest.
func apiNode(t *testing.T) http.Handler {
	t.Helper()
	free := func() string { return freeAddr(t) }
	n, err := New(Config{DataDir: t.TempDir(), Portal: free(), API: free(), Cluster: free(), Link: free(), Name: "t",
		IQNPrefix: "iqn.2026-11.io.tandem", AllowUnsafeFilesystem: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node stopped: %v", err)
		}
	})
	for start := time.Now(); n.Health().Status != "ok"; time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("node not ready: %+v", n.Health())
		}
	}
	return admin.Handler(n, n.log)
}

func TestAdminAPI(t *testing.T) {
	h := apiNode(t)
	tests := []struct {
		name, method, path, body string
		status                   int
		errPart                  string
	}{
		{"1 health", "GET", "/healthz", "", 200, ""},
		{"2 empty list", "GET", "/v1/volumes", "", 200, ""},
		{"3 create", "POST", "/v1/volumes", `{"name":"a","size":"64MiB"}`, 201, ""},
		{"4 create bytes", "POST", "/v1/volumes", `{"name":"b","size":1048576}`, 201, ""},
		{"5 duplicate", "POST", "/v1/volumes", `{"name":"a","size":"64MiB"}`, 409, "already exists"},
		{"6 bad name", "POST", "/v1/volumes", `{"name":"A!","size":"64MiB"}`, 400, "lowercase"},
		{"7 bad size", "POST", "/v1/volumes", `{"name":"c","size":"lots"}`, 400, "GiB"},
		{"8 unaligned size", "POST", "/v1/volumes", `{"name":"c","size":1048577}`, 400, "4 KiB"},
		{"9 unknown field", "POST", "/v1/volumes", `{"name":"c","size":"1GiB","colour":"red"}`, 400, "colour"},
		{"10 not json", "POST", "/v1/volumes", `hello`, 400, "not a volume"},
		{"11 short secret", "POST", "/v1/volumes", `{"name":"c","size":"1GiB","chap_user":"u","chap_secret":"short"}`, 400, "12 to 255"},
		{"12 secret without user", "POST", "/v1/volumes", `{"name":"c","size":"1GiB","chap_secret":"long-enough-secret"}`, 400, "user and a secret"},
		{"13 mutual without one-way", "POST", "/v1/volumes", `{"name":"c","size":"1GiB","mutual_user":"t","mutual_secret":"long-enough-secret"}`, 400, "one-way"},
		{"14 same secrets", "POST", "/v1/volumes", `{"name":"c","size":"1GiB","chap_user":"u","chap_secret":"long-enough-secret","mutual_user":"t","mutual_secret":"long-enough-secret"}`, 400, "differ"},
		{"15 bad allow", "POST", "/v1/volumes", `{"name":"c","size":"1GiB","allow":["bogus"]}`, 400, "iSCSI name"},
		{"16 get", "GET", "/v1/volumes/a", "", 200, ""},
		{"17 get missing", "GET", "/v1/volumes/zz", "", 404, "not found"},
		{"18 delete", "DELETE", "/v1/volumes/b", "", 204, ""},
		{"19 delete missing", "DELETE", "/v1/volumes/b", "", 404, "not found"},
		{"20 wrong method", "PUT", "/v1/volumes/a", "", 405, ""},
		{"21 huge body", "POST", "/v1/volumes", `{"name":"` + strings.Repeat("x", 2<<20) + `"}`, 413, "larger"},
		{"22 chap ok", "POST", "/v1/volumes", `{"name":"c","size":"1GiB","chap_user":"u","chap_secret":"long-enough-secret","allow":["iqn.2026-11.io.example:h1"]}`, 201, ""},
	}
	for _, tc := range tests {
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != tc.status {
			t.Errorf("%s: status %d, want %d: %s", tc.name, w.Code, tc.status, w.Body)
			continue
		}
		if tc.errPart != "" {
			var e struct{ Error string }
			if json.Unmarshal(w.Body.Bytes(), &e); !strings.Contains(e.Error, tc.errPart) {
				t.Errorf("%s: error %q does not mention %q", tc.name, e.Error, tc.errPart)
			}
		}
	}
	// Secrets never come back.
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/v1/volumes/c", nil))
	if strings.Contains(w.Body.String(), "long-enough-secret") || !strings.Contains(w.Body.String(), `"chap": true`) {
		t.Fatalf("volume c: %s", w.Body)
	}
}

func TestConfigValidate(t *testing.T) {
	base := DefaultConfig()
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"1 defaults", func(*Config) {}, true},
		{"2 bad portal", func(c *Config) { c.Portal = "nope" }, false},
		{"3 bad api", func(c *Config) { c.API = "1.2.3.4" }, false},
		{"4 empty data", func(c *Config) { c.DataDir = "" }, false},
		{"5 bad prefix", func(c *Config) { c.IQNPrefix = "eui.0123456789abcdef" }, false},
		{"6 uppercase prefix", func(c *Config) { c.IQNPrefix = "iqn.2026-11.IO.tandem" }, false},
		{"7 other prefix", func(c *Config) { c.IQNPrefix = "iqn.2001-04.com.example" }, true},
	}
	for _, tc := range tests {
		c := base
		tc.mod(&c)
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
