package tests

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"tandem.io/tandem/replication/link"
)

// TestClusterKeyRequired: a process without the cluster key can neither
// join (gossip), vote (raft), propose (forwarded proposals), nor read or
// write a replica (replication links); with the key, the same attempts
// get through, so the test can tell the difference.
func TestClusterKeyRequired(t *testing.T) {
	c := startTestCluster(t, topology{"two data nodes", 2, false})
	n1, n2 := c.nodes[0], c.nodes[1]
	n1.mustCLI("volume", "create", "k", "--size", "16MiB", "--copies", "2")
	v := c.waitInSync("k", time.Minute)

	// A node started with its own key, and one with a wrong key file,
	// joining through n1: never admitted, never listed.
	wrongKey := filepath.Join(t.TempDir(), "wrong.key")
	k, _ := link.NewKey()
	if err := os.WriteFile(wrongKey, k.Encode(), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, keyFile := range []string{"", wrongKey} {
		host := "127.0.0.30"
		x := &node{t: t, data: filepath.Join(t.TempDir(), "x"), portal: freePortOn(t, host), api: freePortOn(t, host),
			name: "intruder" + string(rune('a'+i)), gossip: freeGossipPort(t, host), link: freePortOn(t, host),
			join: []string{n1.gossip}, keyFile: keyFile, notReady: true}
		if keyFile == "" {
			// Its own key: a data directory that started a cluster once.
			x.join = nil
			x.start()
			x.stop()
			x.join = []string{n1.gossip}
		}
		x.start()
		t.Cleanup(x.stop)
		time.Sleep(3 * time.Second)
		nodes, err := n1.client().ListNodes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Name == x.name {
				t.Fatalf("a node without the cluster key is listed: %+v", n)
			}
		}
		h, _ := x.client().Health(context.Background())
		t.Logf("%s (key: %q) after 3 s: health %q; the cluster lists %d nodes", x.name, keyFile, h.Status, len(nodes))
		x.stop()
	}

	// Raw links: a wrong key is refused for every purpose, at either node.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bad := link.Config{Key: k, Name: "intruder"}
	for _, n := range []*node{n1, n2} {
		for _, p := range []link.Purpose{link.PurposeRaft, link.PurposeReplication, link.PurposeRPC} {
			conn, err := link.Dial(ctx, n.link, p, bad)
			if err == nil {
				conn.Close()
				t.Fatalf("%s: a link for %v opened without the cluster key", n.name, p)
			}
			if !errors.Is(err, link.ErrAuth) {
				t.Fatalf("%s: link for %v without the key: %v, want an authentication error", n.name, p, err)
			}
		}
	}
	// With the key, the replica's replication link opens: the refusals
	// above are the key's doing.
	good, err := link.ParseKey(mustRead(t, c.key))
	if err != nil {
		t.Fatal(err)
	}
	var replica *node
	for _, cp := range v.Copies {
		if cp.Node != v.Primary {
			replica = c.node(cp.Node)
		}
	}
	conn, err := link.Dial(ctx, replica.link, link.PurposeReplication, link.Config{Key: good, Name: "tester"})
	if err != nil {
		t.Fatalf("with the cluster key, the replica's link refused: %v", err)
	}
	conn.Close()
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
