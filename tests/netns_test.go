package tests

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netLab is a network of namespaces the test makes and removes: a bridge
// namespace, one namespace per node with a veth on the bridge
// (10.213.0.10, .11, ...), and one for the initiators and the test's own
// API calls (10.213.0.100). No address is put on an interface of the host;
// cuts are iptables rules inside a node's namespace.
type netLab struct {
	t      *testing.T
	prefix string
	nodes  []string // namespace of node i
	client string   // the initiators' namespace
}

const labNet = "10.213.0"

// labAddr is node i's address in the lab.
func labAddr(i int) string { return fmt.Sprintf("%s.%d", labNet, 10+i) }

// newNetLab makes the namespaces for count nodes, or skips the test when
// this machine cannot (not root, or namespaces refused).
func newNetLab(t *testing.T, count int) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	requireTool(t, "ip", "iptables")
	probe := fmt.Sprintf("tdmprobe%d", os.Getpid()%100000)
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("this machine cannot make network namespaces: %v: %s", err, out)
	}
	exec.Command("ip", "netns", "delete", probe).Run()
	l := &netLab{t: t, prefix: fmt.Sprintf("tdm%d", os.Getpid()%100000)}
	t.Cleanup(l.remove)
	br := l.prefix + "br"
	l.run("ip", "netns", "add", br)
	l.run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
	l.run("ip", "-n", br, "link", "set", "br0", "up")
	add := func(ns, addr string, i int) {
		l.run("ip", "netns", "add", ns)
		l.run("ip", "-n", ns, "link", "set", "lo", "up")
		peer := fmt.Sprintf("p%d", i)
		l.run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", br)
		l.run("ip", "-n", br, "link", "set", peer, "master", "br0")
		l.run("ip", "-n", br, "link", "set", peer, "up")
		l.run("ip", "-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
		l.run("ip", "-n", ns, "link", "set", "eth0", "up")
	}
	for i := range count {
		ns := fmt.Sprintf("%sn%d", l.prefix, i+1)
		add(ns, labAddr(i), i)
		l.nodes = append(l.nodes, ns)
	}
	l.client = l.prefix + "ini"
	add(l.client, labNet+".100", 99)
	return l
}

func (l *netLab) run(name string, args ...string) {
	l.t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		l.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func (l *netLab) remove() {
	for _, ns := range append(append([]string{l.client}, l.nodes...), l.prefix+"br") {
		exec.Command("ip", "netns", "delete", ns).Run()
	}
}

// cut drops, in node i's namespace, every packet from the other nodes
// and, unless oneWay, every packet to them: node i is cut off from the
// cluster, still reachable from the initiators.
func (l *netLab) cut(i int, oneWay bool) {
	l.t.Helper()
	for j := range l.nodes {
		if j == i {
			continue
		}
		l.run("ip", "netns", "exec", l.nodes[i], "iptables", "-A", "INPUT", "-s", labAddr(j), "-j", "DROP")
		if !oneWay {
			l.run("ip", "netns", "exec", l.nodes[i], "iptables", "-A", "OUTPUT", "-d", labAddr(j), "-j", "DROP")
		}
	}
}

// heal removes every cut of node i.
func (l *netLab) heal(i int) {
	l.t.Helper()
	l.run("ip", "netns", "exec", l.nodes[i], "iptables", "-F")
}

// startLabCluster starts a cluster of three data nodes, one per namespace
// of a new lab, reached from the lab's client namespace; extra are more
// flags for every node.
func startLabCluster(t *testing.T, extra ...string) (*testCluster, *netLab) {
	t.Helper()
	const count = 3
	lab := newNetLab(t, count)
	c := &testCluster{t: t}
	base := t.TempDir()
	for i := range count {
		host := labAddr(i)
		n := &node{t: t, data: fmt.Sprintf("%s/n%d", base, i+1), name: fmt.Sprintf("n%d", i+1),
			portal: host + ":3260", api: host + ":7480", gossip: host + ":7481", link: host + ":7482",
			netns: lab.nodes[i], clientNS: lab.client, extra: extra}
		if i > 0 {
			n.join, n.keyFile = []string{c.nodes[0].gossip}, c.key
		}
		n.start()
		t.Cleanup(func() { n.stop() })
		if i == 0 {
			c.key = n.data + "/cluster.key"
		}
		c.nodes = append(c.nodes, n)
	}
	c.waitMembers(count)
	return c, lab
}

// httpClient is an HTTP client that reaches the node from its clientNS.
func (n *node) httpClient() *http.Client {
	if n.clientNS == "" {
		return &http.Client{}
	}
	ns := n.clientNS
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialIn(ctx, ns, network, addr)
		}}}
}

// dialIn dials addr from network namespace ns: the socket is made by a
// thread switched into ns (a socket stays in the namespace it was made
// in), which is switched back before it runs anything else.
func dialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked if switching back fails: Go then
		// ends it rather than run other goroutines in the wrong namespace.
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, err}
			return
		}
		defer self.Close()
		if err := setns(target); err != nil {
			runtime.UnlockOSThread()
			done <- result{nil, fmt.Errorf("entering network namespace %s: %w", ns, err)}
			return
		}
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := d.DialContext(dctx, network, addr)
		cancel()
		if setns(self) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

func setns(f *os.File) error { return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET) }
