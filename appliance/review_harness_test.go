package appliance

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/replication"
)

// memCluster is a cluster of in-process nodes on loopback: the first one
// starts it, the others join through it. Tests reach into the nodes (their
// stores, slots and catalogs) to set up and check what the API cannot.
type memCluster struct {
	t     *testing.T
	key   string // a copy of the cluster key, for nodes that (re)join
	nodes map[string]*memNode
	order []string
}

type memNode struct {
	cfg  Config
	n    *Node
	stop func() // cancels Run and waits for it
}

// freeAddr returns an address free for TCP and UDP (gossip binds both)
// on a loopback address of its own, 127.x.y.z at random: a port found free
// and released on 127.0.0.1 can be taken before the node binds it by any
// connection's local end (the kernel hands out the same ephemeral ports),
// which a busy machine (make test runs packages side by side) does.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(254), rand.IntN(256), 1+rand.IntN(254))
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			continue
		}
		addr := ln.Addr().String()
		ln.Close()
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			continue
		}
		pc.Close()
		return addr
	}
	t.Fatal("no free loopback address found")
	return ""
}

// startMemCluster starts count data nodes n1..nN and waits until every
// node is in the catalog and has reconciled once.
func startMemCluster(t *testing.T, count int) *memCluster {
	t.Helper()
	c := &memCluster{t: t, nodes: map[string]*memNode{}}
	base := t.TempDir()
	for i := 1; i <= count; i++ {
		name := "n" + string(rune('0'+i))
		cfg := Config{DataDir: filepath.Join(base, name), Portal: freeAddr(t), API: freeAddr(t), Cluster: freeAddr(t), Link: freeAddr(t),
			Name: name, IQNPrefix: "iqn.2026-11.io.tandem", AllowUnsafeFilesystem: true,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if testing.Verbose() && os.Getenv("REVIEW_LOG") != "" {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", name)
		}
		if i > 1 {
			cfg.Join = []string{c.nodes["n1"].cfg.Cluster}
			cfg.ClusterKeyFile = c.key
		}
		c.order = append(c.order, name)
		c.start(cfg)
		if i == 1 {
			b, err := os.ReadFile(filepath.Join(cfg.DataDir, "cluster.key"))
			if err != nil {
				t.Fatal(err)
			}
			c.key = filepath.Join(base, "cluster.key")
			if err := os.WriteFile(c.key, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.waitFor("every node in the catalog", 60*time.Second, func() bool {
		for _, name := range c.order {
			mn := c.nodes[name]
			if mn.n.Health().Status != "ok" || len(mn.n.cluster.State().Nodes) != count {
				return false
			}
		}
		servers, err := c.leader().cluster.Servers()
		return err == nil && len(servers) == count
	})
	return c
}

// start runs a node with cfg and waits until it is ready.
func (c *memCluster) start(cfg Config) *memNode {
	t := c.t
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stopped := false
	// These tests drive the layers under the lease gate (epochs, fencing,
	// copy renewal): a primary they hold while the catalog moves on must
	// still reach its replicas, as one whose lease check raced would.
	n.noGate.Store(true)
	mn := &memNode{cfg: cfg, n: n}
	mn.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node %s stopped: %v", cfg.Name, err)
		}
	}
	t.Cleanup(mn.stop)
	c.nodes[cfg.Name] = mn
	for start := time.Now(); n.Health().Status != "ok"; time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 60*time.Second {
			t.Fatalf("node %s not ready: %+v", cfg.Name, n.Health())
		}
	}
	return mn
}

func (c *memCluster) node(name string) *Node { return c.nodes[name].n }

// leader is the running node that leads raft.
func (c *memCluster) leader() *Node {
	c.t.Helper()
	var out *Node
	c.waitFor("a leader", 30*time.Second, func() bool {
		for _, name := range c.order {
			if n := c.nodes[name].n; n.wired.Load() && n.cluster.IsLeader() {
				out = n
				return true
			}
		}
		return false
	})
	return out
}

func (c *memCluster) waitFor(what string, timeout time.Duration, ok func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// volume is the catalog's record of a volume, as node on sees it.
func (c *memCluster) volume(on, name string) cluster.Volume {
	return c.node(on).cluster.State().Volumes[name]
}

// createInSync creates a volume with copies on two nodes and waits until
// both are in sync and the primary serves it.
func (c *memCluster) createInSync(name string, size int64) cluster.Volume {
	c.t.Helper()
	ctx := context.Background()
	if _, err := c.leader().CreateVolume(ctx, admin.CreateVolumeRequest{Name: name, Size: admin.Size{Bytes: size}, Copies: 2}); err != nil {
		c.t.Fatalf("create %s: %v", name, err)
	}
	var v cluster.Volume
	c.waitFor("volume "+name+" in sync and served", 60*time.Second, func() bool {
		v = c.leader().cluster.State().Volumes[name]
		return len(v.InSync) == 2 && c.mirrorOf(v.Primary, name) != nil && c.mirrorInSync(v.Primary, name)
	})
	return v
}

// mirrorOf is the device a primary serves the volume through, nil if none.
func (c *memCluster) mirrorOf(node, vol string) *served {
	s := c.node(node).slot(vol)
	if s.current.Load() == nil {
		return nil
	}
	return s
}

// mirrorInSync says whether the primary's mirror has every replica in sync.
func (c *memCluster) mirrorInSync(node, vol string) bool {
	s := c.node(node).slot(vol)
	m := s.current.Load()
	if m == nil {
		return false
	}
	for _, r := range m.Status() {
		if r.State != "in-sync" {
			return false
		}
	}
	return true
}

// write writes p at off through the primary's mirror (what an initiator's
// WRITE does).
func (c *memCluster) write(vol string, p []byte, off int64) {
	c.t.Helper()
	v := c.leader().cluster.State().Volumes[vol]
	var err error
	c.waitFor("a write to "+vol, 30*time.Second, func() bool {
		m := c.node(v.Primary).slot(vol).current.Load()
		if m == nil {
			return false
		}
		err = m.WriteAt(context.Background(), p, off, true)
		return err == nil
	})
}

// readLocal reads node's own copy of the volume from its store.
func (c *memCluster) readLocal(node, vol string, off int64, n int) []byte {
	c.t.Helper()
	dev, err := c.node(node).store.Device(vol)
	if err != nil {
		c.t.Fatalf("%s's copy of %s: %v", node, vol, err)
	}
	p := make([]byte, n)
	if err := dev.ReadAt(context.Background(), p, off); err != nil {
		c.t.Fatalf("reading %s's copy of %s: %v", node, vol, err)
	}
	return p
}

func other(placement []string, not string) string {
	for _, p := range placement {
		if p != not {
			return p
		}
	}
	return ""
}

func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func inSync(v cluster.Volume, node string) bool { return slices.Contains(v.InSync, node) }

// held is a primary whose reconciler is kept from acting on a volume (its
// slot locked) while the catalog moves the volume elsewhere.
type held struct {
	v          cluster.Volume // as created, before the move
	oldP, newP string
	slot       *served
	mirror     replication.Spread // the old primary's mirror, still open
	once       sync.Once
}

// release lets the old primary's reconciler act again (once; also at the
// test's end).
func (h *held) release() { h.once.Do(h.slot.unlock) }

// holdAndSupersede creates a 2-copy volume in sync on a 3-node cluster,
// locks its primary's slot, commits a move of the volume to the other
// copy's node and waits for that node to serve it (by default, its mirror
// open; or until ready says so).
func (c *memCluster) holdAndSupersede(name string, size int64, ready func(h *held) bool) *held {
	c.t.Helper()
	v := c.createInSync(name, size)
	h := &held{v: v, oldP: v.Primary, newP: other(v.Placement, v.Primary)}
	ctx := context.Background()
	h.slot = c.node(h.oldP).slot(name)
	if err := h.slot.lock(ctx); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(h.release)
	h.mirror = h.slot.mirror
	if _, err := c.leader().cluster.Propose(ctx, cluster.SetPrimary{Volume: name, Epoch: v.Epoch, Node: h.newP}); err != nil {
		c.t.Fatal(err)
	}
	if ready == nil {
		ready = func(h *held) bool { return c.mirrorOf(h.newP, name) != nil }
	}
	c.waitFor("the new primary serving", 30*time.Second, func() bool { return ready(h) })
	return h
}

// createServed creates a 1-copy volume on a one-node cluster's n1 and
// waits until it is served.
func (c *memCluster) createServed(name string, size int64) {
	c.t.Helper()
	if _, err := c.node("n1").CreateVolume(context.Background(), admin.CreateVolumeRequest{Name: name, Size: admin.Size{Bytes: size}, Copies: 1}); err != nil {
		c.t.Fatal(err)
	}
	c.waitFor(name+" served", 30*time.Second, func() bool { return c.mirrorOf("n1", name) != nil })
}

// writeBothSides has the new primary write region 0 (acknowledged) and an
// initiator of the old primary write the MiB at 16 MiB, which must fail.
func (c *memCluster) writeBothSides(h *held) {
	c.t.Helper()
	const mib = 1 << 20
	ctx := context.Background()
	if err := c.node(h.newP).slot(h.slot.name).current.Load().WriteAt(ctx, pattern(0xB2, mib), 0, true); err != nil {
		c.t.Fatal(err)
	}
	if err := h.mirror.WriteAt(ctx, pattern(0xA1, mib), 16*mib, true); err == nil {
		c.t.Fatal("a deposed primary acknowledged a write")
	}
}

// oldCopyMatches waits until the old primary's copy is in sync again and
// checks that it holds what the new primary holds at 16 MiB (why: what it
// means if not).
func (c *memCluster) oldCopyMatches(h *held, why string) {
	c.t.Helper()
	const mib = 1 << 20
	name := h.slot.name
	c.waitFor("the old primary's copy in sync again", 60*time.Second, func() bool {
		return inSync(c.volume(h.newP, name), h.oldP) && c.mirrorInSync(h.newP, name)
	})
	want := c.readLocal(h.newP, name, 16*mib, mib)
	if got := c.readLocal(h.oldP, name, 16*mib, mib); !bytes.Equal(got, want) {
		c.t.Fatalf("the in-sync copy on %s holds %#x at 16 MiB, the primary's %#x: %s", h.oldP, got[0], want[0], why)
	}
}
