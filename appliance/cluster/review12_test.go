package cluster

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Review 12: the port RPC (opPort), by which a standby port passes
// PERSISTENT RESERVE IN and OUT to the volume's primary.

// answerDialer dials a server that answers every request with answer.
type answerDialer struct{ answer []byte }

func (d answerDialer) Dial(ctx context.Context, addr raft.ServerAddress) (net.Conn, error) {
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		for {
			if _, err := readFrame(server); err != nil {
				return
			}
			if err := writeFrame(server, d.answer); err != nil {
				return
			}
		}
	}()
	return client, nil
}

// review12Cluster is a Cluster with only a catalog naming node "p" and a
// Forward dialer: enough for RunOnPrimary.
func review12Cluster(t *testing.T, d Dialer) *Cluster {
	t.Helper()
	f := newFSM()
	for i, cmd := range []Command{Init{ClusterID: "c1"}, PutNode{Node: Node{Name: "p", Role: RoleData, Link: "p:1", Joined: t0}}} {
		p, err := encodeCommand(cmd)
		if err != nil {
			t.Fatal(err)
		}
		if res := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: p}).(applyResult); res.err != nil {
			t.Fatal(res.err)
		}
	}
	return &Cluster{cfg: Config{Name: "s", Forward: d}, fsm: f}
}

// TestReview12RunOnPrimaryRefusesAnAnswerWithoutAResult: an answer to a
// port command that decodes (an index, a lease) but carries no port
// result is not the primary's result: RunOnPrimary dereferenced the
// missing result and panicked (in the standby's SCSI path Target.Execute
// recovers it as HARDWARE ERROR; any other caller crashes the node).
func TestReview12RunOnPrimaryRefusesAnAnswerWithoutAResult(t *testing.T) {
	for _, answer := range []string{`{"index":7}`, `{"lease_ms":1000}`} {
		t.Run(answer, func(t *testing.T) {
			c := review12Cluster(t, answerDialer{[]byte(answer)})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("RunOnPrimary panicked on the answer %s: %v", answer, r)
					}
				}()
				_, err = c.RunOnPrimary(ctx, "p", PortCommand{Volume: "v", InitiatorPort: "iqn.i,i,0x1", TargetPort: "iqn.t,t,0x2",
					CDB: []byte{0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0}})
			}()
			if err == nil {
				t.Errorf("RunOnPrimary accepted the answer %s as a result", answer)
			}
		})
	}
}

// TestReview12PortCommandNamesItsNexus: a passed command runs on the
// primary for the I_T nexus it names; one naming no initiator port or no
// target port is not from any port. The primary accepted them: a
// registration for target port "" then reads, to the unit attention code
// (uaFor, uaNexus) and to abortTasksOf, as "the initiator port through
// every target port", an ALL_TG_PT registration the host never asked for.
func TestReview12PortCommandNamesItsNexus(t *testing.T) {
	cdb := []byte{0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0}
	for _, tc := range []struct {
		name string
		cmd  PortCommand
		ok   bool
	}{
		{"a nexus", PortCommand{Volume: "v", InitiatorPort: "iqn.i,i,0x1", TargetPort: "iqn.t,t,0x2", CDB: cdb, Data: make([]byte, 24)}, true},
		{"no target port", PortCommand{Volume: "v", InitiatorPort: "iqn.i,i,0x1", CDB: cdb, Data: make([]byte, 24)}, false},
		{"no initiator port", PortCommand{Volume: "v", TargetPort: "iqn.t,t,0x2", CDB: cdb, Data: make([]byte, 24)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := json.Marshal(rpcRequest{V: rpcVersion, Op: opPort, Port: &tc.cmd, TimeoutMS: 1000})
			_, err := decodeRequest(p)
			if (err == nil) != tc.ok {
				t.Errorf("decodeRequest: %v, want accepted %v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "invalid") {
				t.Errorf("refused with %v, want ErrInvalid", err)
			}
		})
	}
}
