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
	"testing"
	"time"
)

// TestLinuxKernelInitiator boots Debian's kernel in QEMU (TCG: this machine
// has no usable KVM) on a tap link to a node, and runs the Linux initiator
// (open-iscsi, iscsi_tcp) against it: discovery, login, mkfs.ext4 and fsck,
// a 64 MiB file written, logout, login again and the file checked, fstrim.
// The host checks the volume's allocated bytes at each stage: writing grows
// it, fstrim gives the space back. The guest side is linuxvm/guest-init.sh.
func TestLinuxKernelInitiator(t *testing.T) {
	requireTool(t, "qemu-system-x86_64", "depmod", "cpio")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun for the VM's network: %v", err)
	}
	cache := os.Getenv("TANDEM_VM_CACHE")
	if cache == "" {
		cache = filepath.Join(os.TempDir(), "tandem-linuxvm")
	}
	if out, err := run(t, 5*time.Minute, "./linuxvm/build.sh", cache); err != nil {
		t.Fatalf("building the VM image: %v\n%s", err, out)
	}

	// A tap device with a /30 of its own; the node's portal is on it.
	tap := fmt.Sprintf("tdm%d", os.Getpid()%100000)
	hostIP, guestIP := "10.231.7.1", "10.231.7.2"
	for _, args := range [][]string{
		{"tuntap", "add", tap, "mode", "tap"},
		{"addr", "add", hostIP + "/30", "dev", tap},
		{"link", "set", tap, "up"},
	} {
		if out, err := run(t, 10*time.Second, "ip", args...); err != nil {
			run(t, 10*time.Second, "ip", "link", "del", tap)
			t.Skipf("cannot set up the VM's tap network (ip %s): %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() { run(t, 10*time.Second, "ip", "link", "del", tap) })

	n := startNodeAt(t, t.TempDir(), hostIP+":3260")
	n.mustCLI("volume", "create", "linux", "--size", "2GiB")
	iqn := "iqn.2026-11.io.tandem:linux"

	ctl := filepath.Join(t.TempDir(), "ctl.sock")
	vm := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1",
		"-display", "none", "-monitor", "none", "-no-reboot",
		"-kernel", filepath.Join(cache, "vmlinuz"), "-initrd", filepath.Join(cache, "initrd.img"),
		"-append", fmt.Sprintf("console=ttyS0 quiet panic=-1 tandem.portal=%s:3260 tandem.iqn=%s tandem.ip=%s/30", hostIP, iqn, guestIP),
		"-serial", "stdio", "-chardev", "socket,id=ctl,path="+ctl+",server=on,wait=off", "-serial", "chardev:ctl",
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0")
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
	timeout := time.After(6 * time.Minute)
	passed := false
	for !passed {
		var line string
		var ok bool
		select {
		case line, ok = <-lines:
		case <-timeout:
			t.Fatalf("the VM did not finish in 6 minutes; console:\n%s", tail(log.String(), 40))
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
		case strings.HasPrefix(msg, "wait "):
			stage := strings.TrimPrefix(msg, "wait ")
			v := n.volumeJSON("linux")
			allocated[stage] = v["allocated_bytes"].(float64)
			if sessions, _ := v["sessions"].([]any); len(sessions) != 1 {
				t.Errorf("at %q: %d sessions listed, want the VM's one: %v", stage, len(sessions), v["sessions"])
			}
			t.Logf("%s: allocated %.1f MiB", stage, allocated[stage]/(1<<20))
			if _, err := host.Write([]byte("go\n")); err != nil {
				t.Fatalf("answering the guest at %q: %v", stage, err)
			}
		default:
			t.Log(msg)
		}
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
