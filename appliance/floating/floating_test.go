package floating

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"10.0.0.100/24", true},
		{"192.168.1.5/32", true},
		{"10.0.0.100", false},
		{"fd00::1/64", false},
		{"nonsense", false},
	} {
		if _, err := ParsePrefix(tc.in); (err == nil) != tc.ok {
			t.Errorf("ParsePrefix(%q) = %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

// inNewNetns runs fn on a thread of its own in a new network namespace
// with a veth interface "fl0" (its peer fl1) (10.9.0.1/24), and ends that thread after.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fl0"}, PeerName: "fl1"}); err != nil {
			t.Errorf("veth pair: %v", err)
			return
		}
		for _, name := range []string{"fl1", "fl0"} {
			l, _ := netlink.LinkByName(name)
			if err := netlink.LinkSetUp(l); err != nil {
				t.Errorf("%s up: %v", name, err)
				return
			}
		}
		link, _ := netlink.LinkByName("fl0")
		base := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 9, 0, 1), Mask: net.CIDRMask(24, 32)}}
		if err := netlink.AddrAdd(link, base); err != nil {
			t.Errorf("base address: %v", err)
			return
		}
		fn()
	}()
	<-done
}

// TestHoldRelease: Hold adds the address (twice is fine) and announces it,
// Release removes it (twice is fine); an unknown interface is refused.
func TestHoldRelease(t *testing.T) {
	inNewNetns(t, func() {
		if _, err := New(Config{Prefix: netip.MustParsePrefix("10.9.0.100/24"), Interface: "nosuch0"}); err == nil {
			t.Error("New accepted an interface that does not exist")
		}
		a, err := New(Config{Prefix: netip.MustParsePrefix("10.9.0.100/24"), Interface: "fl0"})
		if err != nil {
			t.Error(err)
			return
		}
		check := func(what string, want bool) {
			t.Helper()
			on, err := a.OnInterface()
			if err != nil || on != want || a.Held() != want {
				t.Errorf("%s: on the interface %v (%v), held %v; want %v", what, on, err, a.Held(), want)
			}
		}
		check("at first", false)
		for range 2 {
			if err := a.Hold(); err != nil {
				t.Errorf("Hold: %v", err)
			}
			check("after Hold", true)
		}
		for range 2 {
			if err := a.Release(); err != nil {
				t.Errorf("Release: %v", err)
			}
			check("after Release", false)
		}
	})
}
