package appliance

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/appliance/membership"
	"tandem.io/tandem/target/iscsi"
	"tandem.io/tandem/target/scsi"
	"tandem.io/tandem/volume/block"
)

// ALUA across nodes. Every data node serves every volume's target with the
// same logical unit identity (NAA, serial), each node through its own
// target port: its portal group tag, relative port and target port group
// are the port number the catalog gave it. The states each node reports
// for the groups follow the catalog:
//
//   - the primary's group is active/optimized;
//   - a node with an in-sync copy is standby (transitioning while it is
//     taking over as primary, or while the primary looks dead from here:
//     an initiator whose active path failed then retries on this path
//     rather than failing it, until the promotion lands);
//   - every other node is unavailable.
//
// A change raises ASYMMETRIC ACCESS STATE CHANGED on that node's nexuses,
// and initiators read the new states with REPORT TARGET PORT GROUPS.
// SendTargets lists the portal of every node holding a copy.
//
// A standby node's logical unit has no medium behind it (portDevice
// detached): the access states refuse medium access before any reaches
// it. When the node is promoted, the mirror is attached to the same
// logical unit, so sessions logged in to it carry on through the new
// primary without logging in again. A primary that stops being one closes
// its sessions (their commands finish first), as before ALUA: initiators
// with one path log in again, through the floating address to the new
// primary, and multipath initiators have their other paths.

// devRef holds a device for an atomic pointer.
type devRef struct{ dev servedDevice }

// servedDevice is what a primary serves: a metered mirror.
type servedDevice interface {
	block.Device
	block.Unmapper
	block.Mapper
	block.Sender
}

// portDevice is a logical unit's medium on this node: the primary's
// mirror when attached, nothing on a standby node (its size is the
// catalog's).
type portDevice struct {
	size atomic.Int64
	cur  atomic.Pointer[devRef]
}

var _ servedDevice = (*portDevice)(nil)

func (d *portDevice) attach(dev servedDevice) { d.cur.Store(&devRef{dev}) }
func (d *portDevice) detach()                 { d.cur.Store(nil) }

func (d *portDevice) get() (servedDevice, error) {
	if r := d.cur.Load(); r != nil {
		return r.dev, nil
	}
	// Only a command that passed its access check as the device was
	// detached gets here: the port is changing state.
	return nil, scsi.ALUAError(scsi.Transitioning)
}

func (d *portDevice) Size() int64 {
	if r := d.cur.Load(); r != nil {
		return r.dev.Size()
	}
	return d.size.Load()
}

func (d *portDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	dev, err := d.get()
	if err != nil {
		return err
	}
	return dev.ReadAt(ctx, p, off)
}

func (d *portDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	dev, err := d.get()
	if err != nil {
		return err
	}
	return dev.WriteAt(ctx, p, off, fua)
}

func (d *portDevice) Flush(ctx context.Context) error {
	dev, err := d.get()
	if err != nil {
		return err
	}
	return dev.Flush(ctx)
}

func (d *portDevice) Unmap(ctx context.Context, off, length int64) error {
	dev, err := d.get()
	if err != nil {
		return err
	}
	return dev.Unmap(ctx, off, length)
}

func (d *portDevice) Mapping(ctx context.Context, off int64) (bool, int64, error) {
	dev, err := d.get()
	if err != nil {
		return false, 0, err
	}
	return dev.Mapping(ctx, off)
}

// SendTo sends from the attached device. Detached, it writes nothing and
// fails with an error the transport takes as fatal to the connection:
// only a read racing the port's change of state can get here.
func (d *portDevice) SendTo(ctx context.Context, dst syscall.Conn, off, n int64) (int64, error) {
	dev, err := d.get()
	if err != nil {
		return 0, fmt.Errorf("the volume's device was detached from this port: %w", err)
	}
	return dev.SendTo(ctx, dst, off, n)
}

// selfPort is this node's target port number, 0 if it has none (not in
// the catalog yet, or a witness): it then redirects logins as before ALUA.
func (n *Node) selfPort(st cluster.State) uint16 {
	self, ok := st.Nodes[n.cfg.Name]
	if !ok || self.Role != cluster.RoleData {
		return 0
	}
	return self.Port
}

// setTargetPort gives the iSCSI server this node's port number from the
// catalog, before any target is served with it.
func (n *Node) setTargetPort(st cluster.State) {
	p := n.selfPort(st)
	if p == 0 || n.port.Load() == uint32(p) {
		return
	}
	n.iscsi.SetTargetPort(iscsi.TargetPort{PortalGroupTag: p, RelativePortID: p, PortGroup: p})
	n.port.Store(uint32(p))
}

// portGroups are v's target port groups as this node reports them: own is
// this node's state, the others' follow the catalog.
func (n *Node) portGroups(st cluster.State, v cluster.Volume, own scsi.AccessState) []scsi.PortGroup {
	var groups []scsi.PortGroup
	for name, node := range st.Nodes { // sorted by group ID below
		if node.Role != cluster.RoleData || node.Port == 0 {
			continue
		}
		state := scsi.Unavailable
		switch {
		case name == n.cfg.Name:
			state = own
		case name == v.Primary:
			state = scsi.ActiveOptimized
		case v.IsInSync(name) && slices.Contains(v.Placement, name):
			state = scsi.Standby
		}
		groups = append(groups, scsi.PortGroup{ID: node.Port, State: state, Ports: []uint16{node.Port}})
	}
	slices.SortFunc(groups, func(a, b scsi.PortGroup) int { return int(a.ID) - int(b.ID) })
	return groups
}

// standbyState is this node's state for v when it is not serving it as
// the primary: standby with an in-sync copy (transitioning when the
// primary is this node, not serving yet, or looks dead from here),
// unavailable otherwise.
func (n *Node) standbyState(v cluster.Volume) scsi.AccessState {
	self := n.cfg.Name
	if !v.IsInSync(self) || !slices.Contains(v.Placement, self) {
		return scsi.Unavailable
	}
	if v.Primary == self {
		return scsi.Transitioning
	}
	if m, ok := n.members.Member(v.Primary); !ok || m.State != membership.StateAlive {
		return scsi.Transitioning
	}
	return scsi.Standby
}

// portalsOf lists, for SendTargets, the portal of every data node holding
// a copy of the volume, with its portal group tag. A portal on every
// address (0.0.0.0:3260) is this node's at the address the discovery
// reached, and left out for another node (no address to give).
func (n *Node) portalsOf(volume string) func(net.Addr) []string {
	return func(local net.Addr) []string {
		v, nodes, ok := n.cluster.Volume(volume)
		if !ok {
			return nil
		}
		var out []string
		for _, name := range v.Placement {
			node, ok := nodes[name]
			if !ok || node.Portal == "" || node.Port == 0 {
				continue
			}
			portal := node.Portal
			if host, port, err := net.SplitHostPort(portal); err == nil {
				if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
					ta, ok := local.(*net.TCPAddr)
					if name != n.cfg.Name || !ok {
						continue
					}
					portal = net.JoinHostPort(ta.IP.String(), port)
				}
			}
			out = append(out, fmt.Sprintf("%s,%d", portal, node.Port))
		}
		return out
	}
}

// redirectFor redirects logins that arrive at the floating address to the
// volume's primary when it is another node; nil without a floating
// address.
func (n *Node) redirectFor(volume string) func(net.Addr) string {
	if !n.floatingIP.IsValid() {
		return nil
	}
	return func(local net.Addr) string {
		ta, ok := local.(*net.TCPAddr)
		if !ok {
			return ""
		}
		ip, ok := netip.AddrFromSlice(ta.IP)
		if !ok || ip.Unmap() != n.floatingIP {
			return ""
		}
		v, nodes, ok := n.cluster.Volume(volume)
		if !ok || v.Primary == n.cfg.Name {
			return ""
		}
		// The primary's own portal group tag, not this node's.
		p := nodes[v.Primary]
		if p.Portal == "" || p.Port == 0 {
			return p.Portal
		}
		return fmt.Sprintf("%s,%d", p.Portal, p.Port)
	}
}

// serveStandby serves v's target here as a standby or unavailable port:
// the logical unit with no medium, its port groups from the catalog. s is
// locked.
func (n *Node) serveStandby(s *served, st cluster.State, v cluster.Volume) error {
	own := n.standbyState(v)
	if s.role == roleStandby && s.id == v.ID && s.lu != nil {
		if s.dev.size.Swap(v.Size) != v.Size {
			n.unitAttention(v.Name, scsi.ASCCapacityChanged) // grown
		}
		n.updateStandby(s, st, v, own)
		return nil
	}
	n.unserve(s)
	dev := &portDevice{}
	dev.size.Store(v.Size)
	lu, err := scsi.NewLogicalUnit(scsi.LUConfig{Device: dev, NAA: v.NAA, Serial: v.Serial, Logger: n.log,
		Reservations: catalogReservations{n: n, volume: v.Name, s: s}, Copy: n, PassReservations: n.passToPrimary(v.Name)})
	if err != nil {
		return err
	}
	lu.SetPortGroups(n.portGroups(st, v, own))
	t, err := scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LogicalUnit{0: lu}, Logger: n.log})
	if err != nil {
		return err
	}
	if err := n.iscsi.AddTarget(n.targetConfig(v, t)); err != nil {
		return err
	}
	s.id, s.role, s.naa, s.lu, s.dev, s.reservations = v.ID, roleStandby, v.NAA, lu, dev, string(v.Reservations)
	n.lusMu.Lock()
	n.targets[v.Name] = t
	n.lusMu.Unlock()
	return nil
}

// updateStandby brings a standby port's groups and reservations in line
// with the catalog.
func (n *Node) updateStandby(s *served, st cluster.State, v cluster.Volume, own scsi.AccessState) {
	if s.lu.SetPortGroups(n.portGroups(st, v, own)) {
		n.log.Debug("volume's port states changed", "volume", v.Name, "state", fmt.Sprintf("%#x", own))
	}
	if string(v.Reservations) != s.reservations {
		if err := s.lu.ReloadReservations(); err != nil {
			n.log.Warn("persistent reservations not reloaded from the catalog", "volume", v.Name, "err", err)
			return
		}
		s.reservations = string(v.Reservations)
	}
}

// targetConfig is v's iSCSI target here, executing t.
func (n *Node) targetConfig(v cluster.Volume, t *scsi.Target) iscsi.TargetConfig {
	return iscsi.TargetConfig{Name: n.iqn(v.Name), SCSI: t, Auth: iscsiAuth(v.Export),
		RedirectFor: n.redirectFor(v.Name), Portals: n.portalsOf(v.Name)}
}

// passToPrimary passes a reservation command arriving at this node's
// standby port for volume to the volume's primary (scsi
// LUConfig.PassReservations).
func (n *Node) passToPrimary(volume string) func(context.Context, *scsi.Command) (scsi.Result, error) {
	return func(ctx context.Context, cmd *scsi.Command) (scsi.Result, error) {
		v, ok := n.cluster.State().Volumes[volume]
		if !ok || v.Primary == "" || v.Primary == n.cfg.Name {
			return scsi.Result{}, fmt.Errorf("volume %q has no other primary to pass the command to", volume)
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		r, err := n.cluster.RunOnPrimary(ctx, v.Primary, cluster.PortCommand{Volume: volume,
			InitiatorPort: cmd.Nexus.InitiatorPort, TargetPort: cmd.Nexus.TargetPort,
			RelativePortID: cmd.Nexus.RelativePortID, PortGroup: cmd.Nexus.PortGroup,
			CDB: cmd.CDB, Data: cmd.DataOut})
		if err != nil {
			return scsi.Result{}, err
		}
		return scsi.Result{Status: scsi.Status(r.Status), Sense: r.Sense, Data: r.Data}, nil
	}
}

// runPassed runs, as the volume's primary, a command another node's port
// passed (cluster.Config.Port).
func (n *Node) runPassed(ctx context.Context, cmd cluster.PortCommand) (cluster.PortResult, error) {
	n.mu.Lock()
	s := n.vols[cmd.Volume]
	n.mu.Unlock()
	n.lusMu.RLock()
	t := n.targets[cmd.Volume]
	n.lusMu.RUnlock()
	if s == nil || t == nil || s.servedEpoch.Load() == 0 {
		return cluster.PortResult{}, fmt.Errorf("%s does not serve volume %q as its primary: %w", n.cfg.Name, cmd.Volume, cluster.ErrNotPrimary)
	}
	op := cmd.CDB[0]
	if op != 0x5e && op != 0x5f || op == 0x5f && cmd.CDB[1]&0x1f == 5 {
		// Only PERSISTENT RESERVE IN and OUT (not PREEMPT AND ABORT) are
		// passed between ports.
		return cluster.PortResult{}, fmt.Errorf("opcode %#x is not passed between ports: %w", op, cluster.ErrInvalid)
	}
	r := t.ExecutePassed(ctx, &scsi.Command{
		Nexus: scsi.Nexus{InitiatorPort: cmd.InitiatorPort, TargetPort: cmd.TargetPort,
			RelativePortID: cmd.RelativePortID, PortGroup: cmd.PortGroup},
		CDB: cmd.CDB, DataOut: cmd.Data, ExpectedLength: uint32(max(len(cmd.Data), 64<<10))})
	data := r.Data
	if len(data) > 64<<10 {
		data = data[:64<<10]
	}
	return cluster.PortResult{Status: byte(r.Status), Sense: r.Sense, Data: data}, nil
}
