package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

var testKey = bytes.Repeat([]byte{0x5a}, 32)

// fast makes failure detection take about a second: short enough for
// tests, long enough that a loaded machine (go test ./... -race on two
// cores) does not fail members that are only slow.
var fast = Timing{
	ProbeInterval:    100 * time.Millisecond,
	ProbeTimeout:     50 * time.Millisecond,
	SuspicionMult:    5,
	GossipInterval:   20 * time.Millisecond,
	PushPullInterval: 300 * time.Millisecond,
	TCPTimeout:       10 * time.Second,
}

// patience bounds every wait for gossip to converge.
const patience = 15 * time.Second

func metaOf(name string, i int) Meta {
	return Meta{
		Role:          RoleData,
		Link:          fmt.Sprintf("127.0.0.1:%d", 17000+i),
		Portal:        fmt.Sprintf("127.0.0.1:%d", 13260+i),
		API:           fmt.Sprintf("127.0.0.1:%d", 17480+i),
		Cluster:       "test-" + name,
		CapacityBytes: int64(i+1) << 30,
		FreeBytes:     int64(i) << 20,
	}
}

// node is a started Membership with what the test watches of it.
type node struct {
	*Membership
	addr string // gossip address
	meta Meta
	log  *recorder
	seen *history
}

// history keeps every state a node saw each member in.
type history struct {
	mu     sync.Mutex
	states map[string][]State
}

func (h *history) of(name string) []State {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.states[name])
}

func (h *history) names() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ns []string
	for n := range h.states {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns
}

func start(t *testing.T, name string, i int, edit func(*Config)) *node {
	t.Helper()
	n := &node{meta: metaOf(name, i), log: &recorder{}, seen: &history{states: map[string][]State{}}}
	cfg := Config{
		Name:      name,
		Bind:      "127.0.0.1:0",
		SecretKey: testKey,
		Meta:      n.meta,
		Timing:    fast,
		Logger:    slog.New(n.log),
		observe: func(m Member) {
			n.seen.mu.Lock()
			n.seen.states[m.Name] = append(n.seen.states[m.Name], m.State)
			n.seen.mu.Unlock()
		},
	}
	if edit != nil {
		edit(&cfg)
	}
	m, err := Start(cfg)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { m.Close() })
	n.Membership = m
	self, ok := m.Member(name)
	if !ok || self.State != StateAlive || self.Addr == "" || self.Meta != n.meta {
		t.Fatalf("%s: self is %+v, %v", name, self, ok)
	}
	n.addr = self.Addr
	return n
}

// cluster starts nodes n0..n(count-1); all but the first join the first,
// and every node waits to see all of them alive.
func cluster(t *testing.T, count int) []*node {
	t.Helper()
	nodes := make([]*node, count)
	for i := range nodes {
		nodes[i] = start(t, fmt.Sprintf("n%d", i), i, nil)
		if i > 0 {
			if n, err := nodes[i].Join(context.Background(), []string{nodes[0].addr}); n != 1 || err != nil {
				t.Fatalf("n%d joins: %d, %v", i, n, err)
			}
		}
	}
	for _, n := range nodes {
		await(t, n, "everyone alive", func(ms map[string]Member) bool {
			if len(ms) != count {
				return false
			}
			for _, o := range nodes {
				if m := ms[o.name]; m.State != StateAlive || m.Addr != o.addr || m.Meta != o.meta {
					return false
				}
			}
			return true
		})
	}
	return nodes
}

// await waits, woken by Changes, until cond holds for n's members.
func await(t *testing.T, n *node, what string, cond func(map[string]Member) bool) {
	t.Helper()
	deadline := time.After(patience)
	for {
		ms := map[string]Member{}
		for _, m := range n.Members() {
			ms[m.Name] = m
		}
		if cond(ms) {
			return
		}
		select {
		case <-n.Changes():
		case <-deadline:
			t.Fatalf("%s never saw %s; members: %+v", n.name, what, ms)
		}
	}
}

func TestThreeMembersSeeEachOther(t *testing.T) {
	nodes := cluster(t, 3)
	for _, n := range nodes {
		ms := n.Members()
		if len(ms) != 3 {
			t.Fatalf("%s lists %d members", n.name, len(ms))
		}
		for i, m := range ms { // sorted by name
			if m.Name != nodes[i].name || m.Since.IsZero() {
				t.Errorf("%s: member %d is %+v", n.name, i, m)
			}
		}
	}
}

func TestSetMetaPropagates(t *testing.T) {
	nodes := cluster(t, 3)
	b := nodes[1]
	meta := b.meta
	meta.Cluster, meta.FreeBytes = "joined", 12345
	if err := b.SetMeta(context.Background(), meta); err != nil {
		t.Fatal(err)
	}
	if self, _ := b.Member(b.name); self.Meta != meta {
		t.Fatalf("%s sees itself with %+v", b.name, self.Meta)
	}
	for _, n := range nodes {
		await(t, n, "b's new meta", func(ms map[string]Member) bool {
			return ms[b.name].Meta == meta && ms[b.name].State == StateAlive
		})
	}

	bad := meta
	bad.Role = "nobody"
	if err := b.SetMeta(context.Background(), bad); !errors.Is(err, ErrInvalidMeta) {
		t.Fatalf("SetMeta(role nobody) = %v", err)
	}
	huge := meta
	huge.Link, huge.Portal, huge.API = "a"+strings.Repeat("b", 200)+":1", "a"+strings.Repeat("b", 200)+":1", "a"+strings.Repeat("b", 200)+":1"
	if err := b.SetMeta(context.Background(), huge); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("SetMeta(huge) = %v", err)
	}
	if self, _ := b.Member(b.name); self.Meta != meta {
		t.Fatalf("a refused SetMeta changed the meta to %+v", self.Meta)
	}
}

func TestLeaveIsSeenAsLeft(t *testing.T) {
	nodes := cluster(t, 3)
	c := nodes[2]
	before := map[*node]int{}
	for _, n := range nodes[:2] {
		before[n] = len(n.seen.of(c.name))
	}
	if err := c.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	if self, _ := c.Member(c.name); self.State != StateLeft {
		t.Fatalf("%s sees itself %s after leaving", c.name, self.State)
	}
	// They acknowledged the notice before the departure was gossiped, so
	// none took it for a failure, even for a moment.
	for _, n := range nodes[:2] {
		await(t, n, "n2 left", func(ms map[string]Member) bool { return ms[c.name].State == StateLeft })
		if seen := n.seen.of(c.name)[before[n]:]; slices.Contains(seen, StateDead) {
			t.Errorf("%s saw %s go through %q", n.name, c.name, seen)
		}
	}
	if w := c.log.find("WARN", "leaving"); len(w) > 0 {
		t.Errorf("leaving logged warnings: %q", w)
	}
	if err := c.SetMeta(context.Background(), c.meta); !errors.Is(err, ErrLeft) {
		t.Fatalf("SetMeta after Leave = %v", err)
	}
	if _, err := c.Join(context.Background(), []string{nodes[0].addr}); !errors.Is(err, ErrLeft) {
		t.Fatalf("Join after Leave = %v", err)
	}
	if err := c.Leave(context.Background()); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing after leaving changes nothing for the others.
	for _, n := range nodes[:2] {
		if m, _ := n.Member(c.name); m.State != StateLeft {
			t.Errorf("%s sees %s %s after it closed", n.name, c.name, m.State)
		}
	}
}

func TestLeaveWithAnUnreachablePeer(t *testing.T) {
	nodes := cluster(t, 3)
	b, c := nodes[1], nodes[2]
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// c most likely still lists b alive, fails to tell it, and leaves anyway.
	seen, _ := c.Member(b.name)
	if err := c.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	await(t, nodes[0], "n2 left", func(ms map[string]Member) bool { return ms[c.name].State == StateLeft })
	if w := c.log.find("WARN", "could not tell", "member=n1"); seen.State == StateAlive && len(w) == 0 {
		t.Error("no warning about the peer that could not be told")
	}
}

func TestFailedMemberIsSuspectThenDead(t *testing.T) {
	nodes := cluster(t, 3)
	c := nodes[2]
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[:2] {
		await(t, n, "n2 dead", func(ms map[string]Member) bool { return ms[c.name].State == StateDead })
	}
	// Whichever node's probe failed first saw it suspect before dead (the
	// others may hear of the death first).
	suspected := false
	for _, n := range nodes[:2] {
		seen := n.seen.of(c.name)
		if slices.Contains(seen, StateLeft) {
			t.Errorf("%s saw %s leave: %q", n.name, c.name, seen)
		}
		i := slices.Index(seen, StateSuspect)
		if i >= 0 && slices.Index(seen[i:], StateDead) > 0 {
			suspected = true
		}
		t.Logf("%s saw %s go through %q", n.name, c.name, seen)
	}
	if !suspected {
		t.Error("no node saw the failed member suspect before dead")
	}
}

func TestWrongOrNoKeyCannotJoin(t *testing.T) {
	nodes := cluster(t, 2)
	other := start(t, "intruder", 5, func(c *Config) { c.SecretKey = bytes.Repeat([]byte{1}, 32) })
	n, err := other.Join(context.Background(), []string{nodes[0].addr})
	var je *JoinError
	if n != 0 || !errors.As(err, &je) || len(je.Failed) != 1 || je.Failed[0].Addr != nodes[0].addr {
		t.Fatalf("Join with the wrong key = %d, %v", n, err)
	}
	t.Logf("wrong key: %v", err)

	// A memberlist without encryption at all.
	mc := memberlist.DefaultLocalConfig()
	mc.Name, mc.BindAddr, mc.BindPort = "plain", "127.0.0.1", 0
	mc.LogOutput = &bytes.Buffer{}
	plain, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Shutdown()
	if n, err := plain.Join([]string{nodes[0].addr}); n != 0 || err == nil {
		t.Fatalf("unencrypted Join = %d, %v", n, err)
	}
	if _, err := Start(Config{Name: "keyless", Bind: "127.0.0.1:0", Meta: metaOf("keyless", 6)}); !errors.Is(err, ErrConfig) {
		t.Fatalf("Start without a key = %v", err)
	}

	// n0 would merge a joiner's state after answering it: give it the time,
	// and gossip a few rounds. The members have known only each other.
	time.Sleep(2 * fast.PushPullInterval)
	for _, n := range nodes {
		if names := n.seen.names(); !slices.Equal(names, []string{"n0", "n1"}) {
			t.Errorf("%s has seen %q", n.name, names)
		}
	}
	if ms := other.Members(); len(ms) != 1 {
		t.Errorf("the intruder lists %+v", ms)
	}
	if ms := plain.Members(); len(ms) != 1 {
		t.Errorf("the unencrypted node lists %d members", len(ms))
	}
}

func TestSameNameConflict(t *testing.T) {
	nodes := cluster(t, 2)
	twin := start(t, "n1", 7, nil)
	_, err := twin.Join(context.Background(), []string{nodes[0].addr})
	if !errors.Is(err, ErrNameConflict) || !strings.Contains(err.Error(), nodes[1].addr) {
		t.Fatalf("Join with a taken name = %v", err)
	}
	// n0 merges the twin's state after answering it.
	eventually(t, "n0 logs the conflict", func() bool {
		return len(nodes[0].log.find("ERROR", "same name", "name=n1", "kept="+nodes[1].addr, "ignored="+twin.addr)) > 0
	})
	if logged := twin.log.find("ERROR", "same name", "name=n1"); len(logged) == 0 {
		t.Errorf("the twin did not log the conflict")
	}
	if m, _ := nodes[0].Member("n1"); m.Addr != nodes[1].addr || m.Meta != nodes[1].meta {
		t.Errorf("n0 now has n1 as %+v", m)
	}
}

func TestChangesFires(t *testing.T) {
	a := start(t, "a", 0, nil)
	b := start(t, "b", 1, nil)
	select { // a's own arrival
	case <-a.Changes():
	default:
	}
	if _, err := b.Join(context.Background(), []string{a.addr}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Changes():
	case <-time.After(patience):
		t.Fatal("no change notified after b joined")
	}
	if _, ok := a.Member("b"); !ok {
		t.Fatal("change notified, b not listed")
	}
}

func TestJoinErrors(t *testing.T) {
	a := start(t, "a", 0, nil)
	if _, err := a.Join(context.Background(), nil); err == nil {
		t.Fatal("Join(nil) succeeded")
	}

	refused := closedPorts(t, 2)
	n, err := a.Join(context.Background(), refused)
	var je *JoinError
	if n != 0 || !errors.As(err, &je) || len(je.Failed) != 2 {
		t.Fatalf("Join(%q) = %d, %v", refused, n, err)
	}
	for _, addr := range refused {
		if !strings.Contains(err.Error(), addr) {
			t.Errorf("error %q does not name %s", err, addr)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error spans lines: %q", err)
	}

	// One good address is enough; the bad one is logged.
	b := start(t, "b", 1, nil)
	if n, err := a.Join(context.Background(), []string{refused[0], b.addr}); n != 1 || err != nil {
		t.Fatalf("Join(bad, good) = %d, %v", n, err)
	}
	if len(a.log.find("WARN", refused[0])) == 0 {
		t.Error("the address that failed was not logged")
	}

	// A peer that accepts but never answers: ctx ends the wait.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.Join(ctx, []string{l.Addr().String()}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Join of a silent peer = %v", err)
	}
}

// eventually polls cond until it holds, for what notifies no change.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(patience); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

// closedPorts returns loopback addresses nothing listens on.
func closedPorts(t *testing.T, n int) []string {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close()
	}
	return addrs
}

func TestClose(t *testing.T) {
	a := start(t, "a", 0, nil)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := a.Join(context.Background(), []string{"127.0.0.1:1"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Join after Close = %v", err)
	}
	if err := a.SetMeta(context.Background(), a.meta); !errors.Is(err, ErrClosed) {
		t.Errorf("SetMeta after Close = %v", err)
	}
	if err := a.Leave(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Leave after Close = %v", err)
	}
	if ms := a.Members(); len(ms) != 1 || ms[0].Name != "a" {
		t.Errorf("Members after Close = %+v", ms)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	good := Config{Name: "a", Bind: "127.0.0.1:0", SecretKey: testKey, Meta: metaOf("a", 0)}
	for i, tc := range []struct {
		edit func(*Config)
		want error
	}{
		{func(c *Config) { c.Name = "" }, ErrConfig},
		{func(c *Config) { c.Name = "a b" }, ErrConfig},
		{func(c *Config) { c.Name = strings.Repeat("a", maxNameLen+1) }, ErrConfig},
		{func(c *Config) { c.Bind = "" }, ErrConfig},
		{func(c *Config) { c.Bind = "localhost:7481" }, ErrConfig},
		{func(c *Config) { c.Bind = "127.0.0.1:70000" }, ErrConfig},
		{func(c *Config) { c.Advertise = "10.0.0.1:0" }, ErrConfig},
		{func(c *Config) { c.Advertise = "10.0.0.1" }, ErrConfig},
		{func(c *Config) { c.Advertise = "10.0.0.1:7481" }, ErrConfig}, // bind port 0
		{func(c *Config) { c.SecretKey = nil }, ErrConfig},
		{func(c *Config) { c.SecretKey = testKey[:16] }, ErrConfig},
		{func(c *Config) { c.Meta.Role = "" }, ErrInvalidMeta},
		{func(c *Config) { c.Timing.ProbeInterval = -1 }, ErrConfig},
		{func(c *Config) { c.ForgetAfter = -1 }, ErrConfig},
	} {
		cfg := good
		tc.edit(&cfg)
		if m, err := Start(cfg); !errors.Is(err, tc.want) {
			if m != nil {
				m.Close()
			}
			t.Errorf("%d: Start(%+v) = %v, want %v", i, cfg, err, tc.want)
		}
	}
	// The port is taken.
	a := start(t, "a", 0, nil)
	cfg := good
	cfg.Bind = a.addr
	if m, err := Start(cfg); err == nil {
		m.Close()
		t.Error("Start on a taken port succeeded")
	}
}

func TestAdvertise(t *testing.T) {
	bind := freePort(t)
	a := start(t, "a", 0, func(c *Config) { c.Bind, c.Advertise = bind, "127.0.0.2:7999" })
	if a.addr != "127.0.0.2:7999" {
		t.Fatalf("advertised as %s", a.addr)
	}
}

// portsGiven holds the ports freePort has returned: the kernel may hand a
// just-released port to the next bind(0), and two nodes must not share one.
var portsGiven sync.Map

// freePort returns a loopback address whose port was free for both TCP and
// UDP, as memberlist needs, and that it has not returned before.
func freePort(t *testing.T) string {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			if _, taken := portsGiven.LoadOrStore(addr, true); !taken {
				return addr
			}
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}
