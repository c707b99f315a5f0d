package tests

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/target/iscsi/initiator"
)

// testCluster is a cluster of real `tandem serve` processes on this
// machine, each on its own loopback address (127.0.0.10, .11, ...), that a
// test drives with the CLI and real initiators and can kill (SIGKILL),
// freeze (SIGSTOP) and restart. Failover tests reuse it.
type testCluster struct {
	t     *testing.T
	nodes []*node
	key   string // the cluster key file (the first node's)
}

// topology names a cluster shape.
type topology struct {
	name    string
	data    int  // data nodes
	witness bool // one more node, a witness
}

var topologies = []topology{{"three data nodes", 3, false}, {"two data nodes and a witness", 2, true}}

// startTestCluster starts the first node (which starts the cluster), then
// the others joining through it, and waits until every node is a raft
// member the gossip sees alive.
func startTestCluster(t *testing.T, top topology) *testCluster {
	t.Helper()
	c := &testCluster{t: t}
	base := t.TempDir()
	total := top.data
	if top.witness {
		total++
	}
	for i := 0; i < total; i++ {
		host := fmt.Sprintf("127.0.0.%d", 10+i)
		name := fmt.Sprintf("n%d", i+1)
		n := &node{t: t, data: filepath.Join(base, name), portal: freePortOn(t, host), api: freePortOn(t, host), name: name,
			gossip: freeGossipPort(t, host), link: freePortOn(t, host)}
		if top.witness && i == total-1 {
			n.name, n.witness = "w", true
		}
		if i > 0 {
			n.join, n.keyFile = []string{c.nodes[0].gossip}, c.key
		}
		n.start()
		t.Cleanup(func() { n.stop() })
		if i == 0 {
			c.key = filepath.Join(n.data, "cluster.key")
		}
		c.nodes = append(c.nodes, n)
	}
	c.waitMembers(total)
	return c
}

// newLoopbackNode is a cluster node, not started, on its own loopback
// address 127.0.0.(10+i), with its data directory under base.
func newLoopbackNode(t *testing.T, base string, i int, name string) *node {
	t.Helper()
	host := fmt.Sprintf("127.0.0.%d", 10+i)
	return &node{t: t, data: filepath.Join(base, name), portal: freePortOn(t, host), api: freePortOn(t, host), name: name,
		gossip: freeGossipPort(t, host), link: freePortOn(t, host)}
}

// startTestClusterWith is startTestCluster with each node's settings
// adjusted by configure before it first starts (more flags, say).
func startTestClusterWith(t *testing.T, top topology, configure func(*node)) *testCluster {
	t.Helper()
	c := &testCluster{t: t}
	base := t.TempDir()
	total := top.data
	if top.witness {
		total++
	}
	for i := 0; i < total; i++ {
		n := newLoopbackNode(t, base, i, fmt.Sprintf("n%d", i+1))
		if top.witness && i == total-1 {
			n.name, n.witness = "w", true
		}
		if i > 0 {
			n.join, n.keyFile = []string{c.nodes[0].gossip}, c.key
		}
		configure(n)
		n.start()
		t.Cleanup(func() { n.stop() })
		if i == 0 {
			c.key = filepath.Join(n.data, "cluster.key")
		}
		c.nodes = append(c.nodes, n)
	}
	c.waitMembers(total)
	return c
}

func (c *testCluster) node(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// any is a running node to ask.
func (c *testCluster) any() *node {
	for _, n := range c.nodes {
		if n.cmd != nil {
			return n
		}
	}
	c.t.Fatal("no node is running")
	return nil
}

func (n *node) client() *admin.Client {
	c := n.httpClient()
	c.Timeout = 30 * time.Second
	return &admin.Client{BaseURL: "http://" + n.api, HTTPClient: c}
}

// waitMembers waits until a node lists want nodes, all alive and in raft.
func (c *testCluster) waitMembers(want int) {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last []admin.Node
	for time.Now().Before(deadline) {
		nodes, err := c.any().client().ListNodes(context.Background())
		ok := err == nil && len(nodes) == want
		for _, n := range nodes {
			if n.State != "alive" || n.Raft == "" {
				ok = false
			}
		}
		if ok {
			return
		}
		last = nodes
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("cluster did not form: %d nodes wanted, last seen %+v\n%s", want, last, c.logs())
}

func (c *testCluster) logs() string {
	var b strings.Builder
	for _, n := range c.nodes {
		if n.log != nil {
			fmt.Fprintf(&b, "--- %s\n%s\n", n.name, lastLines(n.log.String(), 60))
		}
	}
	return b.String()
}

func lastLines(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// volume is the admin API's view of a volume, from any running node.
func (c *testCluster) volume(name string) admin.Volume {
	c.t.Helper()
	v, err := c.any().client().GetVolume(context.Background(), name)
	if err != nil {
		c.t.Fatal(err)
	}
	return v
}

// waitInSync waits until every copy of the volume is in sync.
func (c *testCluster) waitInSync(name string, timeout time.Duration) admin.Volume {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, err := c.any().client().GetVolume(context.Background(), name)
		if err == nil {
			in := 0
			for _, cp := range v.Copies {
				if cp.State == "in-sync" {
					in++
				}
			}
			if in == len(v.Copies) && in > 0 {
				return v
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("volume %s not in sync after %v: %+v %v\n%s", name, timeout, v, err, c.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freeze stops a node's process without killing it (SIGSTOP); thaw
// resumes it.
func (n *node) freeze() { n.cmd.Process.Signal(syscall.SIGSTOP) }
func (n *node) thaw()   { n.cmd.Process.Signal(syscall.SIGCONT) }

// stampedLoad writes stamped 4 KiB blocks through real iSCSI sessions and
// keeps, outside the nodes, what every block may hold: the last
// acknowledged stamp, and any stamp whose write had no answer (it may or
// may not have landed: a timeout is a "maybe"). A session that breaks
// logs in again through the next portal whose path is active (ALUA) and
// resends.
type stampedLoad struct {
	t       *testing.T
	target  string
	portals []string
	blocks  int64 // blocks of 4 KiB the load writes, from LBA 0

	mu       sync.Mutex
	acked    map[int64]uint64   // block -> last acknowledged stamp
	maybe    map[int64][]uint64 // block -> stamps with no answer since
	writes   int64
	retries  int64
	maxStall time.Duration // longest a write waited, retries included
	stallAt  time.Time
	// spans are every acknowledged write's start and duration (retries
	// included), for the stall around an event.
	spans []span
	stop  chan struct{}
	wg    sync.WaitGroup
	errs  []error
	next  map[int]int // worker -> the portal it tries first
}

func newStampedLoad(t *testing.T, volume string, blocks int64, portals ...string) *stampedLoad {
	return &stampedLoad{t: t, target: "iqn.2026-11.io.tandem:" + volume, portals: portals, blocks: blocks,
		acked: map[int64]uint64{}, maybe: map[int64][]uint64{}, stop: make(chan struct{})}
}

// start runs workers sessions, each writing its own share of the blocks.
func (l *stampedLoad) start(workers int) {
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go l.worker(w, workers)
	}
}

func (l *stampedLoad) finish() {
	close(l.stop)
	l.wg.Wait()
	for _, err := range l.errs {
		l.t.Error(err)
	}
}

// dial logs worker w in through the first portal, from the one after the
// worker's last, whose path is active (dialActive).
func (l *stampedLoad) dial(w int) (*initiator.Session, error) {
	var err error
	l.mu.Lock()
	if l.next == nil {
		l.next = map[int]int{}
	}
	first := l.next[w]
	l.mu.Unlock()
	for i := range l.portals {
		k := (first + i) % len(l.portals)
		var s *initiator.Session
		s, err = dialActive(context.Background(), initiator.Config{Addr: l.portals[k], Target: l.target,
			Name: "iqn.2026-11.test:load", ISID: [6]byte{0x40, 0, 0, 0, 1, byte(w)}, Timeout: 10 * time.Second})
		if err == nil {
			l.mu.Lock()
			l.next[w] = k + 1
			l.mu.Unlock()
			return s, nil
		}
	}
	return nil, err
}

// dialActive logs in and checks, as a multipath initiator's path checker
// does, that the path serves the LUN now: TEST UNIT READY answers GOOD
// after the unit attentions a new nexus sees. A path whose port is
// standby, unavailable or transitioning (ALUA, NOT READY) is an error.
func dialActive(ctx context.Context, cfg initiator.Config) (*initiator.Session, error) {
	s, err := initiator.Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	for range 4 {
		r, err := s.Do(make([]byte, 6), nil, 0)
		if err != nil {
			s.Close()
			return nil, err
		}
		if r.Status == statusGood {
			return s, nil
		}
		if k, asc := r.SenseKey(); r.Status != statusCheckCondition || k != 6 {
			s.Close()
			return nil, fmt.Errorf("%s: path not active: TEST UNIT READY status %#x sense %#x/%04x", cfg.Addr, r.Status, k, asc)
		}
	}
	s.Close()
	return nil, fmt.Errorf("%s: unit attentions do not clear", cfg.Addr)
}

type span struct {
	start time.Time
	d     time.Duration
}

// stallAround is the longest write that was in flight at t or started in
// the following window: how long the event at t held writes up.
func (l *stampedLoad) stallAround(t time.Time, window time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var worst time.Duration
	for _, s := range l.spans {
		if s.start.Add(s.d).After(t) && s.start.Before(t.Add(window)) && s.d > worst {
			worst = s.d
		}
	}
	return worst
}

func stampBlock(block int64, stamp uint64) []byte {
	p := make([]byte, 4096)
	for i := 0; i < len(p); i += 16 {
		binary.BigEndian.PutUint64(p[i:], uint64(block))
		binary.BigEndian.PutUint64(p[i+8:], stamp)
	}
	return p
}

func (l *stampedLoad) worker(w, workers int) {
	defer l.wg.Done()
	rng := rand.New(rand.NewPCG(uint64(w), 7))
	var s *initiator.Session
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	stamp := uint64(w) << 48
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		block := int64(rng.IntN(int(l.blocks/int64(workers))))*int64(workers) + int64(w)
		stamp++
		data := stampBlock(block, stamp)
		start := time.Now()
		for attempt := 0; ; attempt++ {
			if s == nil {
				var err error
				if s, err = l.dial(w); err != nil {
					if time.Since(start) > 60*time.Second {
						l.fail(fmt.Errorf("worker %d: no portal takes a login for 60s: %v", w, err))
						return
					}
					time.Sleep(100 * time.Millisecond)
					continue
				}
			}
			l.mu.Lock()
			l.maybe[block] = append(l.maybe[block], stamp)
			l.mu.Unlock()
			r, err := s.Do(write16(uint64(block)*8, 8), data, 0)
			if err == nil && r.Status == statusGood {
				l.mu.Lock()
				l.acked[block] = stamp
				l.maybe[block] = nil
				l.writes++
				d := time.Since(start)
				if d > l.maxStall {
					l.maxStall, l.stallAt = d, start
				}
				l.spans = append(l.spans, span{start, d})
				l.mu.Unlock()
				break
			}
			// No answer, or an error status: the initiator retries (a
			// real one would after a unit attention or a reconnect).
			l.mu.Lock()
			l.retries++
			l.mu.Unlock()
			if k, _ := r.SenseKey(); err != nil || r.Status == statusCheckCondition && k == 2 {
				// Lost, or a path that cannot serve now (ALUA NOT READY):
				// another path, as a multipath initiator does.
				s.Close()
				s = nil
			}
			if time.Since(start) > 60*time.Second {
				l.fail(fmt.Errorf("worker %d: write to block %d not acknowledged for 60s: %v %+v", w, block, err, r))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (l *stampedLoad) fail(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
}

// check reads back every block the load wrote through a session on
// portal and compares it with the history: the last acknowledged stamp,
// or one written after it with no answer.
func (l *stampedLoad) check(portal string) {
	l.t.Helper()
	s, err := dialActive(context.Background(), initiator.Config{Addr: portal, Target: l.target,
		Name: "iqn.2026-11.test:check", ISID: [6]byte{0x40, 0, 0, 0, 2, 0}, Timeout: 20 * time.Second})
	if err != nil {
		l.t.Fatal(err)
	}
	defer s.Close()
	bad := 0
	for block, stamp := range l.acked {
		r, err := s.Do(read16(uint64(block)*8, 8), nil, 4096)
		if k, _ := r.SenseKey(); err == nil && r.Status == statusCheckCondition && k == 6 {
			r, err = s.Do(read16(uint64(block)*8, 8), nil, 4096) // a unit attention (new nexus) first
		}
		if err != nil || r.Status != statusGood {
			l.t.Fatalf("reading block %d: %v %+v", block, err, r)
		}
		got := binary.BigEndian.Uint64(r.Data[8:])
		if got == stamp || slices.Contains(l.maybe[block], got) {
			continue
		}
		if bad++; bad < 10 {
			l.t.Errorf("block %d holds stamp %x; the last acknowledged was %x (unanswered since: %x)", block, got, stamp, l.maybe[block])
		}
	}
	if bad > 0 {
		l.t.Fatalf("%d of %d blocks lost an acknowledged write", bad, len(l.acked))
	}
}

func write16(lba uint64, blocks uint32) []byte {
	c := make([]byte, 16)
	c[0] = 0x8a
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], blocks)
	return c
}

func read16(lba uint64, blocks uint32) []byte {
	c := make([]byte, 16)
	c[0] = 0x88
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], blocks)
	return c
}

// metric returns the value of a Prometheus series on a node's /metrics
// (the first line starting with prefix), -1 if absent.
func (n *node) metric(prefix string) float64 {
	resp, err := http.Get("http://" + n.api + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b := new(strings.Builder)
	buf := make([]byte, 32<<10)
	for {
		k, err := resp.Body.Read(buf)
		b.WriteString(string(buf[:k]))
		if err != nil {
			break
		}
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(line, prefix) {
			var v float64
			fields := strings.Fields(line)
			fmt.Sscan(fields[len(fields)-1], &v)
			return v
		}
	}
	return -1
}

var _ = os.Getenv

// loggedAfter returns how long after since the first line of any node's log
// containing msg was written (slog's time=), and false if none was.
func (c *testCluster) loggedAfter(since time.Time, msg string) (time.Duration, bool) {
	var first time.Time
	for _, n := range c.nodes {
		if n.log == nil {
			continue
		}
		for _, line := range strings.Split(n.log.String(), "\n") {
			if !strings.Contains(line, msg) || !strings.HasPrefix(line, "time=") {
				continue
			}
			stamp, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			at, err := time.Parse(time.RFC3339Nano, stamp)
			if err != nil || at.Before(since) {
				continue
			}
			if first.IsZero() || at.Before(first) {
				first = at
			}
		}
	}
	return first.Sub(since), !first.IsZero()
}
