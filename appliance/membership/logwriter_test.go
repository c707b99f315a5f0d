package membership

import (
	"log"
	"log/slog"
	"testing"
)

func TestLogWriter(t *testing.T) {
	for i, tc := range []struct {
		line    string
		level   slog.Level
		msg     string
		suspect string
	}{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:5", slog.LevelDebug, "memberlist: Stream connection from=127.0.0.1:5", ""},
		{"[INFO] memberlist: Suspect node-2 has failed, no acks received", slog.LevelInfo, "memberlist: Suspect node-2 has failed, no acks received", "node-2"},
		{"[WARN] memberlist: Refuting a suspect message (from: b)", slog.LevelWarn, "memberlist: Refuting a suspect message (from: b)", ""},
		{"[ERR] memberlist: Conflicting address for b.", slog.LevelError, "memberlist: Conflicting address for b.", ""},
		{"[ERROR] x", slog.LevelError, "x", ""},
		{"Err: Could not set the deadline", slog.LevelInfo, "Err: Could not set the deadline", ""},
		// Suspect only from the exact line.
		{"[INFO] memberlist: Suspect  has failed, no acks received", slog.LevelInfo, "memberlist: Suspect  has failed, no acks received", ""},
		{"[INFO] memberlist: Suspect b has failed", slog.LevelInfo, "memberlist: Suspect b has failed", ""},
	} {
		var rec recorder
		var suspects []string
		w := &logWriter{
			log:     slog.New(&rec),
			suspect: func(name string) { suspects = append(suspects, name) },
		}
		log.New(w, "", 0).Print(tc.line) // as memberlist does: one Write, newline added
		if want := tc.level.String() + " " + tc.msg; len(rec.records) != 1 || rec.records[0] != want {
			t.Errorf("%d: %q logged %q, want %q", i, tc.line, rec.records, want)
		}
		if tc.suspect == "" && len(suspects) != 0 || tc.suspect != "" && (len(suspects) != 1 || suspects[0] != tc.suspect) {
			t.Errorf("%d: %q: suspects %q, want %q", i, tc.line, suspects, tc.suspect)
		}
	}
}
