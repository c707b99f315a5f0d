package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// TestHCLogAdapter: raft's routine output goes to debug, its errors to
// warn once a minute per message, structured arguments intact.
func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	a := newHCLogAdapter(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	log := a.Named("snapshot").With("id", "s1")
	tests := []struct {
		log  func()
		want string
	}{
		{func() { log.Info("entering leader state", "term", 3) }, `level=DEBUG msg="entering leader state" logger=raft.snapshot id=s1 term=3`},
		{func() { log.Warn("heartbeat timeout reached") }, `level=DEBUG msg="heartbeat timeout reached"`},
		{func() { log.Error("failed to heartbeat to", "peer", "b") }, `level=WARN msg="failed to heartbeat to" logger=raft.snapshot id=s1 peer=b`},
		{func() { log.Error("failed to heartbeat to", "peer", "b") }, `level=DEBUG msg="failed to heartbeat to"`},
		{func() { log.Error("failed to append to logs") }, `level=WARN msg="failed to append to logs"`},
		{func() { log.Debug("servers", "list", hclog.Fmt("%d+%d", 1, 2)) }, `list=1+2`},
	}
	for i, tc := range tests {
		buf.Reset()
		tc.log()
		if !strings.Contains(buf.String(), tc.want) {
			t.Errorf("#%d: logged %q, want %q in it", i, buf.String(), tc.want)
		}
	}

	quiet := newHCLogAdapter(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	buf.Reset()
	quiet.Info("chatter")
	quiet.Warn("more chatter")
	if buf.Len() != 0 || quiet.IsDebug() || !quiet.IsError() {
		t.Errorf("at info level: logged %q, debug %v, error %v", buf.String(), quiet.IsDebug(), quiet.IsError())
	}
}
