package membership

import (
	"context"
	"log/slog"
	"strings"
)

// logWriter is the io.Writer behind the *log.Logger memberlist logs to. The
// log package hands it one line per call: "[LEVEL] memberlist: text".
type logWriter struct {
	log *slog.Logger
	// suspect is called with the name in memberlist's line for a probe that
	// failed (see suspectName), before memberlist marks the node suspect.
	suspect func(name string)
}

func (w *logWriter) Write(p []byte) (int, error) {
	level, msg := parseLogLine(string(p))
	if name, ok := suspectName(msg); ok && w.suspect != nil {
		w.suspect(name)
	}
	w.log.Log(context.Background(), level, msg)
	return len(p), nil
}

var logLevels = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG]", slog.LevelDebug},
	{"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn},
	{"[ERR]", slog.LevelError},
	{"[ERROR]", slog.LevelError},
}

// parseLogLine splits a memberlist log line into its level (Info when it
// has no known prefix) and its text.
func parseLogLine(line string) (slog.Level, string) {
	line = strings.TrimRight(line, "\r\n")
	level := slog.LevelInfo
	for _, l := range logLevels {
		if rest, ok := strings.CutPrefix(line, l.prefix); ok {
			level, line = l.level, strings.TrimLeft(rest, " ")
			break
		}
	}
	return level, line
}

// suspectName recognises the line memberlist v0.7.0 logs when this node's
// probe of another got no ack (state.go, probeNode), just before it marks
// that node suspect. memberlist has no other way to tell that a node is
// suspect: Node.State is never updated (hashicorp/memberlist#266) and the
// EventDelegate has no suspect event. TestFailedMemberIsSuspectThenDead
// fails if a memberlist upgrade changes the line.
func suspectName(msg string) (string, bool) {
	rest, ok := strings.CutPrefix(msg, "memberlist: Suspect ")
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, " has failed, no acks received")
	return name, ok && name != ""
}
