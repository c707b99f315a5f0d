package membership

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// recorder is a slog.Handler that keeps what is logged, for tests to look
// at. It is safe for memberlist to keep logging to it after a test ended.
type recorder struct {
	mu      sync.Mutex
	records []string // "LEVEL msg k=v k=v"
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", rec.Level, rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	r.records = append(r.records, b.String())
	r.mu.Unlock()
	return nil
}

// find returns the records containing every one of parts.
func (r *recorder) find(parts ...string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var found []string
next:
	for _, s := range r.records {
		for _, p := range parts {
			if !strings.Contains(s, p) {
				continue next
			}
		}
		found = append(found, s)
	}
	return found
}
