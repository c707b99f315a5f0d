package cluster

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// repeatQuiet is how long an error raft repeats (a peer that cannot be
// reached fails every heartbeat) stays at debug level after it was logged
// at warn.
const repeatQuiet = time.Minute

// hclogAdapter routes raft's hclog output into slog. Most of what raft
// says, warnings included (elections, rejected appends while a follower
// catches up, votes refused), is routine and goes to debug; the catalog
// logs leadership changes and admissions itself. raft's errors go to warn,
// except repeats of the same message within repeatQuiet (a peer that is
// down fails every heartbeat), which go to debug too.
type hclogAdapter struct {
	log   *slog.Logger
	name  string
	args  []any
	quiet *repeatFilter
}

// repeatFilter remembers when each message was last logged loudly. raft's
// messages are constant strings, so the map stays small.
type repeatFilter struct {
	mu   sync.Mutex // protects last
	last map[string]time.Time
}

func newHCLogAdapter(l *slog.Logger) *hclogAdapter {
	return &hclogAdapter{log: l, name: "raft", quiet: &repeatFilter{last: map[string]time.Time{}}}
}

var _ hclog.Logger = (*hclogAdapter)(nil)

// level maps an hclog level to the slog level used for msg.
func (a *hclogAdapter) level(l hclog.Level, msg string) slog.Level {
	if l < hclog.Error {
		return slog.LevelDebug
	}
	now := time.Now()
	a.quiet.mu.Lock()
	defer a.quiet.mu.Unlock()
	if last, ok := a.quiet.last[msg]; ok && now.Sub(last) < repeatQuiet {
		return slog.LevelDebug
	}
	a.quiet.last[msg] = now
	return slog.LevelWarn
}

// Log implements hclog.Logger.
func (a *hclogAdapter) Log(l hclog.Level, msg string, args ...any) {
	if l == hclog.Off {
		return
	}
	lvl := a.level(l, msg)
	ctx := context.Background()
	if !a.log.Enabled(ctx, lvl) {
		return
	}
	all := make([]any, 0, 2+len(a.args)+len(args))
	all = append(all, "logger", a.name)
	all = append(all, a.args...)
	for _, arg := range args {
		if f, ok := arg.(hclog.Format); ok && len(f) > 0 {
			if format, ok := f[0].(string); ok {
				arg = fmt.Sprintf(format, f[1:]...)
			}
		}
		all = append(all, arg)
	}
	a.log.Log(ctx, lvl, msg, all...)
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) IsTrace() bool { return a.log.Enabled(context.Background(), slog.LevelDebug) }
func (a *hclogAdapter) IsDebug() bool { return a.log.Enabled(context.Background(), slog.LevelDebug) }
func (a *hclogAdapter) IsInfo() bool  { return a.log.Enabled(context.Background(), slog.LevelDebug) }
func (a *hclogAdapter) IsWarn() bool  { return a.log.Enabled(context.Background(), slog.LevelDebug) }
func (a *hclogAdapter) IsError() bool { return a.log.Enabled(context.Background(), slog.LevelWarn) }

func (a *hclogAdapter) ImpliedArgs() []any { return a.args }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	c := *a
	c.args = append(append([]any(nil), a.args...), args...)
	return &c
}

func (a *hclogAdapter) Name() string { return a.name }

func (a *hclogAdapter) Named(name string) hclog.Logger {
	c := *a
	c.name = a.name + "." + name
	return &c
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *a
	c.name = name
	return &c
}

// SetLevel does nothing: the slog handler decides.
func (a *hclogAdapter) SetLevel(hclog.Level) {}

func (a *hclogAdapter) GetLevel() hclog.Level {
	if a.IsDebug() {
		return hclog.Trace
	}
	return hclog.Error
}

func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

func (a *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return slog.NewLogLogger(a.log.Handler(), slog.LevelDebug).Writer()
}
