package tests

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// vmRelayEnv, when set in its environment, makes the test binary a relay
// (see TestMain): QEMU's user network runs it for each TCP connection the
// VM opens to the forwarded portal, with that connection as its standard
// input and output, and it carries the bytes to and from the node's
// loopback portal named by the variable.
const vmRelayEnv = "TANDEM_VM_RELAY"

// relayStdio copies standard input to a TCP connection to addr and the
// connection to standard output until both directions have ended, passing
// each end-of-stream on as a half-close. It returns the process's exit
// code and writes nothing else: standard error is the guest's connection too.
func relayStdio(addr string) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 1
	}
	defer c.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(os.Stdout, c)
		syscall.Shutdown(int(os.Stdout.Fd()), syscall.SHUT_WR)
	}()
	io.Copy(c, os.Stdin)
	c.(*net.TCPConn).CloseWrite()
	<-done
	return 0
}

// TestLinuxKernelInitiator boots Debian's kernel in QEMU (TCG: this machine
// has no usable KVM) and runs the Linux initiator (open-iscsi, iscsi_tcp)
// against a node on the host's loopback: discovery, login, mkfs.ext4 and
// fsck, a 64 MiB file written, logout, login again and the file checked,
// fstrim. The host checks the volume's allocated bytes at each stage:
// writing grows it, fstrim gives the space back. The guest side is
// linuxvm/guest-init.sh.
//
// The VM's only network is QEMU's user network with restrict=on: the guest
// (10.0.2.15) reaches nothing but 10.0.2.100:3260, which QEMU forwards, one
// relay process per connection (vmRelayEnv), to the node's portal on
// 127.0.0.1. Nothing on the host's interfaces changes. The node answers
// SendTargets with the address it was reached at, its 127.0.0.1 portal,
// which the guest cannot reach: the guest checks discovery lists the
// target, and logs in through a node record for 10.0.2.100:3260.
func TestLinuxKernelInitiator(t *testing.T) {
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

	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "linux", "--size", "2GiB")
	const iqn, guestPortal = "iqn.2026-11.io.tandem:linux", "10.0.2.100:3260"
	// The command line is split like a shell's (g_shell_parse_argv), and
	// QEMU option values double their commas.
	relay := strings.ReplaceAll("'"+strings.ReplaceAll(self, "'", `'\''`)+"'", ",", ",,")

	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	vm := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1",
		"-display", "none", "-monitor", "none", "-no-reboot",
		"-kernel", filepath.Join(cache, "vmlinuz"), "-initrd", filepath.Join(cache, "initrd.img"),
		"-append", fmt.Sprintf("console=ttyS0 quiet panic=-1 tandem.portal=%s tandem.iqn=%s tandem.ip=10.0.2.15/24", guestPortal, iqn),
		"-serial", "stdio", "-chardev", "socket,id=ctl,path="+ctl+",server=on,wait=off", "-serial", "chardev:ctl",
		"-netdev", "user,id=n0,restrict=on,guestfwd=tcp:"+guestPortal+"-cmd:"+relay, "-device", "virtio-net-pci,netdev=n0")
	vm.Env = append(os.Environ(), vmRelayEnv+"="+n.portal)
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
	defer func() {
		vm.Process.Kill()
		<-exited
	}()
	var host net.Conn
	for i := 0; i < 100 && host == nil; i++ {
		host, _ = net.Dial("unix", ctl)
		time.Sleep(50 * time.Millisecond)
	}
	if host == nil {
		t.Fatal("cannot connect to the VM's control serial port")
	}
	defer host.Close()

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(console)
		for sc.Scan() {
			lines <- sc.Text()
		}
		io.Copy(io.Discard, console)
	}()
	var log strings.Builder
	allocated := map[string]float64{}
	var discovered []string
	start, timeout := time.Now(), time.After(6*time.Minute)
	passed := false
	for !passed {
		var line string
		var ok bool
		select {
		case line, ok = <-lines:
		case <-timeout:
			t.Fatalf("the VM did not finish in 6 minutes; console:\n%s\nnode log:\n%s", tail(log.String(), 40), tail(n.log.String(), 40))
		}
		if !ok {
			t.Fatalf("the VM stopped without PASS; console:\n%s\nnode log:\n%s", tail(log.String(), 40), tail(n.log.String(), 20))
		}
		log.WriteString(line + "\n")
		_, msg, found := strings.Cut(line, "TANDEM-VM: ")
		switch {
		case !found:
		case strings.HasPrefix(msg, "FAIL"):
			t.Fatalf("guest: %s; console:\n%s\nnode log:\n%s", msg, tail(log.String(), 40), tail(n.log.String(), 20))
		case msg == "PASS":
			passed = true
		case strings.HasPrefix(msg, "discovered "):
			discovered = append(discovered, strings.TrimPrefix(msg, "discovered "))
		case strings.HasPrefix(msg, "wait "):
			stage := strings.TrimPrefix(msg, "wait ")
			v := n.volumeJSON("linux")
			allocated[stage] = v["allocated_bytes"].(float64)
			if sessions, _ := v["sessions"].([]any); len(sessions) != 1 || !strings.Contains(fmt.Sprint(sessions[0]), "iqn.2026-11.io.tandem.test:linux-vm") {
				t.Errorf("at %q: sessions %v, want the VM's one", stage, v["sessions"])
			}
			t.Logf("%5.1fs %s: allocated %.1f MiB", time.Since(start).Seconds(), stage, allocated[stage]/(1<<20))
			if _, err := host.Write([]byte("go\n")); err != nil {
				t.Fatalf("answering the guest at %q: %v", stage, err)
			}
		default:
			t.Logf("%5.1fs %s", time.Since(start).Seconds(), msg)
		}
	}
	// The node names the portal it was reached at: its own, on loopback.
	if want := n.portal + ",1 " + iqn; len(discovered) != 1 || discovered[0] != want {
		t.Errorf("discovery listed %q, want the one line %q", discovered, want)
	}
	const mib = 1 << 20
	if grown := allocated["written"] - allocated["formatted"]; grown < 60*mib {
		t.Errorf("writing a 64 MiB file grew the volume by %.1f MiB only", grown/mib)
	}
	if left := allocated["trimmed"] - allocated["formatted"]; left > 4*mib {
		t.Errorf("after fstrim the volume holds %.1f MiB more than after mkfs: space not given back", left/mib)
	}
	if strings.Contains(n.log.String(), "panic") {
		t.Errorf("node log mentions a panic:\n%s", n.log)
	}
}
