// Package tests holds Tandem's end-to-end tests: they build the real
// `tandem` binary, run nodes as processes on loopback, and drive them with
// real initiators (libiscsi's tools and test suite, QEMU's iscsi:// driver)
// and the real CLI.
package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tandemBin is the binary under test, built once by TestMain.
var tandemBin string

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == vmRelayArg {
		os.Exit(relayStdio(os.Args[2])) // a connection a test VM opened (bootVM)
	}
	dir, err := os.MkdirTemp("", "tandem-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tandemBin = filepath.Join(dir, "tandem")
	build := exec.Command("go", "build", "-o", tandemBin, "../cmd/tandem")
	if os.Getenv("TANDEM_E2E_RACE") != "" {
		build = exec.Command("go", "build", "-race", "-o", tandemBin, "../cmd/tandem")
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building tandem:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool skips the test when a Debian-packaged tool is missing; `make
// test` installs them first, so in CI nothing is skipped.
func requireTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed (make test installs it)", n)
			}
			t.Skipf("%s is not installed; run make deps", n)
		}
	}
}

// portsGiven holds every port the helpers below have handed out in this
// test process. The kernel may give a just-closed port to the next bind(0),
// so without it a node's link and gossip could be handed the same port and
// the second listener would fail with "address already in use".
var portsGiven = struct {
	sync.Mutex
	m map[int]bool
}{m: map[int]bool{}}

// claimPort records port as handed out; false if it was already.
func claimPort(port int) bool {
	portsGiven.Lock()
	defer portsGiven.Unlock()
	if portsGiven.m[port] {
		return false
	}
	portsGiven.m[port] = true
	return true
}

// freePort returns a loopback address with a port nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	return freePortOn(t, "127.0.0.1")
}

// freePortOn returns host:port with a TCP port nothing listens on and that
// no other helper call in this process has returned.
func freePortOn(t *testing.T, host string) string {
	t.Helper()
	return freeAddr(t, host, false)
}

// freeGossipPort returns a loopback address whose port is free for both
// TCP and UDP (memberlist uses both on one port).
func freeGossipPort(t *testing.T, host string) string {
	t.Helper()
	return freeAddr(t, host, true)
}

// freeAddr returns host:port with a port free for TCP (and UDP too if udp)
// that no other call in this process has returned.
func freeAddr(t *testing.T, host string, udp bool) string {
	t.Helper()
	for i := 0; i < 100; i++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().(*net.TCPAddr)
		free := true
		if udp {
			pc, err := net.ListenPacket("udp", addr.String())
			if free = err == nil; free {
				pc.Close()
			}
		}
		ln.Close()
		if free && claimPort(addr.Port) {
			return addr.String()
		}
	}
	t.Fatalf("no port free on %s (udp too: %v)", host, udp)
	return ""
}

// logBuffer collects a process's output; safe to read while it writes.
type logBuffer struct {
	mu sync.Mutex // protects b
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// node is one `tandem serve` process.
type node struct {
	t      *testing.T
	data   string
	portal string
	api    string
	cmd    *exec.Cmd
	log    *logBuffer
	waited chan error
	// strictFS starts the node without --allow-unsafe-filesystem.
	strictFS bool
	// Cluster settings: name (default "e2e"), gossip and link addresses,
	// nodes to join, the cluster key file, witness role, more flags.
	name, gossip, link string
	join               []string
	keyFile            string
	witness            bool
	extra              []string
	// notReady: start returns once the API answers, ready or not (a node
	// that cannot join).
	notReady bool
	// netns runs the node in that network namespace; clientNS is where
	// the test's CLI, API client and initiators reach it from (netLab).
	netns, clientNS string
}

// command is name run in the network namespace ns ("": this one).
func command(ns, name string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

func startNode(t *testing.T, data string) *node {
	t.Helper()
	return startNodeAt(t, data, freePort(t))
}

// startNodeAt starts a node whose portal is the given address.
func startNodeAt(t *testing.T, data, portal string) *node {
	t.Helper()
	n := &node{t: t, data: data, portal: portal, api: freePort(t), name: "e2e", gossip: freeGossipPort(t, "127.0.0.1"), link: freePort(t)}
	n.start()
	t.Cleanup(func() { n.stop() })
	return n
}

func (n *node) start() {
	n.t.Helper()
	n.log = new(logBuffer)
	args := []string{"serve", "--data", n.data, "--portal", n.portal, "--api", n.api, "--name", n.name,
		"--cluster", n.gossip, "--link", n.link}
	if len(n.join) > 0 {
		args = append(args, "--join", strings.Join(n.join, ","))
	}
	if n.keyFile != "" {
		args = append(args, "--cluster-key-file", n.keyFile)
	}
	if n.witness {
		args = append(args, "--witness")
	}
	args = append(args, n.extra...)
	if !n.strictFS {
		// Test machines' temporary directories may be on ext4 without a
		// journal; power loss is tested on vfs.Mem, not on them.
		args = append(args, "--allow-unsafe-filesystem")
	}
	n.cmd = command(n.netns, tandemBin, args...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.waited = make(chan error, 1)
	go func() { n.waited <- n.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := n.httpClient().Get("http://" + n.api + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 || n.notReady {
				return
			}
		}
		select {
		case err := <-n.waited:
			n.t.Fatalf("tandem serve exited: %v\n%s", err, n.log)
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("tandem serve not healthy after 30s\n%s", n.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (n *node) stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n.waited:
		if err != nil {
			n.t.Errorf("tandem serve did not stop cleanly: %v\n%s", err, n.log)
		}
	case <-time.After(20 * time.Second):
		n.cmd.Process.Kill()
		<-n.waited
		n.t.Errorf("tandem serve ignored SIGTERM for 20s\n%s", n.log)
	}
	n.cmd = nil
}

// kill sends SIGKILL: the crash case.
func (n *node) kill() {
	n.cmd.Process.Kill()
	<-n.waited
	n.cmd = nil
}

// cli runs the admin CLI against this node and returns stdout; it fails
// the test on a non-zero exit unless allowFail.
func (n *node) cli(args ...string) (string, error) {
	n.t.Helper()
	cmd := command(n.clientNS, tandemBin, append([]string{"--api", "http://" + n.api}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), fmt.Errorf("tandem %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (n *node) mustCLI(args ...string) string {
	n.t.Helper()
	out, err := n.cli(args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// url is the LUN URL of a volume.
func (n *node) url(volume string) string {
	return fmt.Sprintf("iscsi://%s/iqn.2026-11.io.tandem:%s/0", n.portal, volume)
}

// volumeJSON returns `tandem volume show NAME -o json` decoded.
func (n *node) volumeJSON(name string) map[string]any {
	n.t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(n.mustCLI("volume", "show", name, "-o", "json")), &v); err != nil {
		n.t.Fatal(err)
	}
	return v
}

// allocatedBytes asks the admin API how many bytes a volume's layers hold
// on disk; cheaper than volumeJSON (no CLI process), for polling.
func (n *node) allocatedBytes(volume string) (int64, error) {
	resp, err := http.Get("http://" + n.api + "/v1/volumes/" + volume)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v struct {
		AllocatedBytes int64 `json:"allocated_bytes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, fmt.Errorf("GET /v1/volumes/%s: %s: %w", volume, resp.Status, err)
	}
	return v.AllocatedBytes, nil
}

// run runs a command with a timeout and returns its combined output.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%s timed out after %v: %s", name, timeout, out)
	}
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
