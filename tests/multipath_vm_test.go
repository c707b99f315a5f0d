package tests

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"tandem.io/tandem/appliance/admin"
)

// vmRelayArg, as the test binary's first argument with an address after
// it, makes it a relay to that address (see TestMain, relayStdio): QEMU's
// user network runs one for each TCP connection the VM opens to a
// forwarded address, with that connection as its standard input and
// output.
const vmRelayArg = "-tandem-relay"

// guestVM is a running test VM (linuxvm/): its console lines and the
// host's end of its second serial port.
type guestVM struct {
	t     *testing.T
	lines chan string
	host  net.Conn
	log   strings.Builder
	times []time.Time // when each console line arrived
}

// bootVM builds (or reuses) the VM image and boots it with the kernel
// arguments args; each forward maps a guest address (10.0.2.x:port) to a
// host portal, through a relay process per connection.
func bootVM(t *testing.T, args string, forwards [][2]string) *guestVM {
	t.Helper()
	requireTool(t, "qemu-system-x86_64", "depmod", "cpio")
	cache := os.Getenv("TANDEM_VM_CACHE")
	if cache == "" {
		cache = filepath.Join(os.TempDir(), "tandem-linuxvm")
	}
	if out, err := run(t, 5*time.Minute, "./linuxvm/build.sh", cache); err != nil {
		t.Fatalf("building the VM image: %v\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	quote := func(s string) string {
		return strings.ReplaceAll("'"+strings.ReplaceAll(s, "'", `'\''`)+"'", ",", ",,")
	}
	netdev := "user,id=n0,restrict=on"
	for _, f := range forwards {
		netdev += ",guestfwd=tcp:" + f[0] + "-cmd:" + quote(self) + " " + vmRelayArg + " " + quote(f[1])
	}
	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	vm := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1",
		"-display", "none", "-monitor", "none", "-no-reboot",
		"-kernel", filepath.Join(cache, "vmlinuz"), "-initrd", filepath.Join(cache, "initrd.img"),
		"-append", "console=ttyS0 quiet panic=-1 "+args,
		"-serial", "stdio", "-chardev", "socket,id=ctl,path="+ctl+",server=on,wait=off", "-serial", "chardev:ctl",
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0")
	console, err := vm.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	vm.Stderr = vm.Stdout
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- vm.Wait() }()
	t.Cleanup(func() {
		vm.Process.Kill()
		<-exited
	})
	g := &guestVM{t: t, lines: make(chan string)}
	for i := 0; i < 100 && g.host == nil; i++ {
		g.host, _ = net.Dial("unix", ctl)
		time.Sleep(50 * time.Millisecond)
	}
	if g.host == nil {
		t.Fatal("cannot connect to the VM's control serial port")
	}
	t.Cleanup(func() { g.host.Close() })
	go func() {
		defer close(g.lines)
		sc := bufio.NewScanner(console)
		for sc.Scan() {
			g.lines <- sc.Text()
		}
		io.Copy(io.Discard, console)
	}()
	return g
}

// next returns the next message the guest prints ("TANDEM-VM: <msg>") and
// when it arrived; it fails the test at timeout, on FAIL, or if the VM
// stops.
func (g *guestVM) next(deadline time.Time, logs func() string) (string, time.Time) {
	g.t.Helper()
	for {
		var line string
		var ok bool
		select {
		case line, ok = <-g.lines:
		case <-time.After(time.Until(deadline)):
			g.t.Fatalf("the VM did not finish in time; console:\n%s\nnodes:\n%s", tail(g.log.String(), 40), logs())
		}
		if !ok {
			g.t.Fatalf("the VM stopped without PASS; console:\n%s\nnodes:\n%s", tail(g.log.String(), 40), logs())
		}
		at := time.Now()
		g.log.WriteString(line + "\n")
		_, msg, found := strings.Cut(line, "TANDEM-VM: ")
		if !found {
			continue
		}
		if strings.HasPrefix(msg, "FAIL") {
			g.t.Fatalf("guest: %s; console:\n%s\nnodes:\n%s", msg, tail(g.log.String(), 60), logs())
		}
		return msg, at
	}
}

// answer sends a line to the guest's second serial port.
func (g *guestVM) answer(s string) {
	if _, err := g.host.Write([]byte(s + "\n")); err != nil {
		g.t.Fatalf("answering the guest: %v", err)
	}
}

// TestLinuxMultipathFailover is issue 10's acceptance 4 for Linux
// dm-multipath: a Linux VM (Debian's kernel, open-iscsi) logs in to the
// volume's target through two paths, the primary's port and the
// replica's, builds a dm-multipath device over them with the ALUA device
// handler (linuxvm/guest-init.sh, multipath_scenario) and writes stamped
// blocks through it; the primary is killed (SIGKILL) under the load. The
// guest must see no I/O error: writes pause while the replica takes over
// (its port going from standby to active/optimized, announced by the
// ALUA state change), then go on; at the end every block holds its last
// write. The pause, from the kill to the first write the guest completes
// after it, is reported (TANDEM_FAILOVER_TRIALS runs that many trials, for
// make bench).
func TestLinuxMultipathFailover(t *testing.T) {
	trials := 1
	if s := os.Getenv("TANDEM_FAILOVER_TRIALS"); s != "" {
		trials, _ = strconv.Atoi(s)
	}
	var byKind [2][]time.Duration // [0]: the primary alone killed, [1]: the primary and raft leader
	var all []time.Duration
	for i := range max(trials, 1) {
		t.Run(fmt.Sprintf("trial_%d", i), func(t *testing.T) {
			p := multipathTrial(t, i)
			byKind[i%2] = append(byKind[i%2], p)
			all = append(all, p)
		})
		if t.Failed() {
			return
		}
	}
	summary := func(ps []time.Duration) string {
		if len(ps) == 0 {
			return "none"
		}
		slices.Sort(ps)
		return fmt.Sprintf("%d trials, pause median %v, max %v", len(ps), ps[len(ps)/2].Round(time.Millisecond), ps[len(ps)-1].Round(time.Millisecond))
	}
	t.Logf("Linux dm-multipath (VM, ALUA): %s (kill of a primary that is not the leader: %s; of the primary and raft leader: %s)",
		summary(all), summary(byKind[0]), summary(byKind[1]))
}

func multipathTrial(t *testing.T, trial int) time.Duration {
	c := startTestCluster(t, topologies[0])
	c.nodes[0].mustCLI("volume", "create", "mp", "--size", "64MiB", "--copies", "2")
	v := c.waitInSync("mp", 60*time.Second)
	// Even trials kill a primary that is not the raft leader, odd ones
	// the leader too (a new leader is elected first, within the lease the
	// dead primary held).
	leader := c.leaderOf()
	if want := trial%2 == 1; (v.Primary == leader.name) != want {
		to := leader.name
		if !want {
			to = other(c, v, leader.name)
		}
		c.nodes[0].mustCLI("volume", "move", "mp", "--primary", to)
		v = c.waitInSync("mp", 60*time.Second)
	}
	primary := c.node(v.Primary)
	var replica *node
	for _, cp := range v.Copies {
		if cp.Node != v.Primary {
			replica = c.node(cp.Node)
		}
	}
	what := "the primary"
	if primary == leader {
		what = "the primary and raft leader"
	}
	const iqn = "iqn.2026-11.io.tandem:mp"
	g := bootVM(t, fmt.Sprintf("tandem.scenario=multipath tandem.portals=10.0.2.100:3260,10.0.2.101:3260 tandem.iqn=%s tandem.ip=10.0.2.15/24 tandem.portal=10.0.2.100:3260", iqn),
		[][2]string{{"10.0.2.100:3260", primary.portal}, {"10.0.2.101:3260", replica.portal}})
	deadline := time.Now().Add(8 * time.Minute)
	var killed, prev time.Time
	var pause time.Duration // the longest wait between two writes from the kill on
	writes, afterKill := 0, 0
	for {
		msg, at := g.next(deadline, c.logs)
		switch {
		case msg == "PASS":
			t.Logf("trial %d: %d writes through dm-multipath, none failed, every block holds its last write; writes paused %v across the kill of %s (%s)",
				trial, writes, pause.Round(time.Millisecond), primary.name, what)
			if nv := c.volume("mp"); nv.Primary != replica.name {
				t.Errorf("primary %s after the kill, want %s", nv.Primary, replica.name)
			}
			return pause
		case msg == "wait multipath ready":
			g.answer("go")
		case strings.HasPrefix(msg, "w "):
			writes++
			switch {
			case killed.IsZero():
				prev = at
				if writes == 50 {
					killed = time.Now()
					primary.kill()
					t.Logf("trial %d: %s (%s) killed after %d writes", trial, primary.name, what, writes)
				}
			default:
				from := prev
				if killed.After(prev) {
					from = killed
				}
				pause = max(pause, at.Sub(from))
				prev = at
				if afterKill++; afterKill == 300 {
					g.answer("stop")
				}
			}
		default:
			t.Logf("trial %d: guest: %s", trial, msg)
		}
	}
}

// other is a node holding a copy of v that is not not.
func other(c *testCluster, v admin.Volume, not string) string {
	for _, cp := range v.Copies {
		if cp.Node != not {
			return cp.Node
		}
	}
	c.t.Fatalf("volume %s has no copy off %s: %+v", v.Name, not, v.Copies)
	return ""
}
