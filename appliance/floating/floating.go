// Package floating moves a portal address between nodes, for initiators
// that know one address only (QEMU's libiscsi driver, simple setups).
//
// One live node holds the address: it is added to the node's interface
// and announced with gratuitous ARP, so that the initiators' and the
// switches' caches point at the new holder at once instead of after their
// entries age out. The appliance decides who holds it; this package only
// adds, announces and removes it.
package floating

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/vishvananda/netlink"
)

// Config names the address and the interface it goes on.
type Config struct {
	// Prefix is the address with its prefix length (10.0.0.100/24).
	Prefix netip.Prefix
	// Interface is the network interface it is added to.
	Interface string
	Logger    *slog.Logger
}

// ParsePrefix parses ADDR/PREFIX as --floating-address takes it (IPv4).
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("floating address %q: want ADDR/PREFIX such as 10.0.0.100/24: %v", s, err)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("floating address %q: only IPv4 is supported", s)
	}
	return p, nil
}

// Address is the floating address on this node. Its methods are safe for
// concurrent use.
type Address struct {
	cfg Config
	log *slog.Logger

	mu   sync.Mutex
	held bool
}

// New checks that the interface exists.
func New(cfg Config) (*Address, error) {
	if !cfg.Prefix.IsValid() || !cfg.Prefix.Addr().Is4() {
		return nil, fmt.Errorf("floating address %v: want an IPv4 ADDR/PREFIX", cfg.Prefix)
	}
	if _, err := net.InterfaceByName(cfg.Interface); err != nil {
		return nil, fmt.Errorf("floating address %v: interface %q: %w", cfg.Prefix, cfg.Interface, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Address{cfg: cfg, log: log}, nil
}

// Addr is the floating address.
func (a *Address) Addr() netip.Addr { return a.cfg.Prefix.Addr() }

func (a *Address) nl() (netlink.Link, *netlink.Addr, error) {
	link, err := netlink.LinkByName(a.cfg.Interface)
	if err != nil {
		return nil, nil, fmt.Errorf("interface %q: %w", a.cfg.Interface, err)
	}
	p := a.cfg.Prefix
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	return link, addr, nil
}

// Hold adds the address to the interface (if it is not there) and
// announces it with gratuitous ARP, three times 100 ms apart.
func (a *Address) Hold() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	link, addr, err := a.nl()
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("adding %v to %s: %w", a.cfg.Prefix, a.cfg.Interface, err)
	}
	a.held = true
	if err := a.announce(); err != nil {
		// The address is held; caches catch up when their entries age.
		a.log.Warn("floating address held but not announced (gratuitous ARP)", "addr", a.cfg.Prefix, "err", err)
	}
	return nil
}

func (a *Address) announce() error {
	ifi, err := net.InterfaceByName(a.cfg.Interface)
	if err != nil {
		return err
	}
	c, err := arp.Dial(ifi)
	if err != nil {
		return err
	}
	defer c.Close()
	ip := a.cfg.Prefix.Addr()
	p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, ip, ethernet.Broadcast, ip)
	if err != nil {
		return err
	}
	for i := range 3 {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if err := c.WriteTo(p, ethernet.Broadcast); err != nil {
			return err
		}
	}
	return nil
}

// Release removes the address from the interface.
func (a *Address) Release() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	link, addr, err := a.nl()
	if err != nil {
		return err
	}
	a.held = false
	if err := netlink.AddrDel(link, addr); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("removing %v from %s: %w", a.cfg.Prefix, a.cfg.Interface, err)
	}
	return nil
}

// Held reports whether this node holds the address (as far as it added it).
func (a *Address) Held() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held
}

// OnInterface reports whether the address is on the interface now
// (whoever put it there).
func (a *Address) OnInterface() (bool, error) {
	link, addr, err := a.nl()
	if err != nil {
		return false, err
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false, err
	}
	for _, x := range addrs {
		if x.IP.Equal(addr.IP) {
			return true, nil
		}
	}
	return false, nil
}
