package tests

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

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
// relay process per connection (vmRelayArg), to the node's portal on
// 127.0.0.1. Nothing on the host's interfaces changes. The node answers
// SendTargets with the address it was reached at, its 127.0.0.1 portal,
// which the guest cannot reach: the guest checks discovery lists the
// target, and logs in through a node record for 10.0.2.100:3260.
func TestLinuxKernelInitiator(t *testing.T) {
	n := startNode(t, t.TempDir())
	n.mustCLI("volume", "create", "linux", "--size", "2GiB")
	const iqn, guestPortal = "iqn.2026-11.io.tandem:linux", "10.0.2.100:3260"
	g := bootVM(t, fmt.Sprintf("tandem.portal=%s tandem.iqn=%s tandem.ip=10.0.2.15/24", guestPortal, iqn),
		[][2]string{{guestPortal, n.portal}})
	allocated := map[string]float64{}
	var discovered []string
	start, deadline := time.Now(), time.Now().Add(6*time.Minute)
	logs := func() string { return tail(n.log.String(), 20) }
	for passed := false; !passed; {
		msg, _ := g.next(deadline, logs)
		switch {
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
			g.answer("go")
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
