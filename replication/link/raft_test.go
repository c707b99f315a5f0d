package link

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// TestStreamLayer: two raft transports over links exchange an
// AppendEntries; one with another key cannot reach them.
func TestStreamLayer(t *testing.T) {
	newTransport := func(name string, key Key) (*raft.NetworkTransport, *Listener) {
		cfg, _ := testConfig(name, key)
		l := listen(t, cfg)
		tr := raft.NewNetworkTransport(StreamLayer(l, cfg), 2, 5*time.Second, io.Discard)
		t.Cleanup(func() { tr.Close() })
		return tr, l
	}
	a, _ := newTransport("a", testKey(1))
	b, lb := newTransport("b", testKey(1))
	outsider, _ := newTransport("x", testKey(2))
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case rpc := <-b.Consumer():
				req, ok := rpc.Command.(*raft.AppendEntriesRequest)
				if !ok {
					rpc.Respond(nil, nil)
					continue
				}
				rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, LastLog: req.PrevLogEntry + uint64(len(req.Entries)), Success: true}, nil)
			case <-done:
				return
			}
		}
	}()
	req := &raft.AppendEntriesRequest{
		RPCHeader:    raft.RPCHeader{ID: []byte("a"), Addr: []byte(a.LocalAddr())},
		Term:         3,
		PrevLogEntry: 10,
		Entries:      []*raft.Log{{Index: 11, Term: 3, Type: raft.LogCommand, Data: []byte("volume create v1")}},
	}
	var resp raft.AppendEntriesResponse
	if err := a.AppendEntries("b", b.LocalAddr(), req, &resp); err != nil {
		t.Fatal(err)
	}
	if !resp.Success || resp.Term != 3 || resp.LastLog != 11 {
		t.Fatalf("response %+v", resp)
	}
	if b.LocalAddr() != raft.ServerAddress(lb.Addr().String()) {
		t.Fatalf("transport address %s, want %s", b.LocalAddr(), lb.Addr())
	}
	if err := outsider.AppendEntries("b", b.LocalAddr(), req, &resp); !errors.Is(err, ErrAuth) {
		t.Fatalf("a transport with another key: %v, want ErrAuth", err)
	}
}
