package appliance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/hashicorp/raft"

	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/appliance/membership"
	"tandem.io/tandem/replication/link"
	"tandem.io/tandem/volume"
)

// startCluster opens the raft catalog over the link listener. A node
// without --join and without raft state starts a cluster of its own; one
// with --join waits to be admitted by the leader.
func (n *Node) startCluster(ctx context.Context) error {
	stream := link.StreamLayer(n.links, n.linkConfig())
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		// A LAN: a stalled peer (cut, frozen) holds a replication
		// pipeline, and with it raft's shutdown, no longer than this.
		Stream: stream, MaxPool: 3, Timeout: 2 * time.Second, Logger: cluster.RaftLogger(n.log),
	})
	c, err := cluster.Open(cluster.Config{
		Name: n.cfg.Name, Dir: filepath.Join(n.cfg.DataDir, "raft"), Transport: trans,
		Bootstrap: len(n.cfg.Join) == 0, Forward: rpcDialer{n}, Logger: n.log, Grant: n.grant, Port: n.runPassed, Lease: n.cfg.Lease,
		// Tuned for a LAN: a dead leader is replaced within about a
		// second, inside the time a lease lets primaries serve unrenewed,
		// and a failover that has to wait for a new leader (the leader was
		// the primary) stays short.
		HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
	})
	if err != nil {
		trans.Close()
		return fmt.Errorf("raft catalog: %w", err)
	}
	n.cluster = c
	n.goRun(func() {
		if err := c.ServeRPC(ctx, n.links.Accept(link.PurposeRPC)); err != nil && ctx.Err() == nil {
			n.log.Error("forwarded-proposal server stopped", "err", err)
		}
	})
	return nil
}

func (n *Node) role() cluster.Role {
	if n.cfg.Witness {
		return cluster.RoleWitness
	}
	return cluster.RoleData
}

// meta is what this node gossips about itself.
func (n *Node) meta() membership.Meta {
	m := membership.Meta{Role: string(n.role()), Link: n.cfg.LinkAddr(), Portal: n.cfg.Portal, API: n.cfg.API,
		Cluster: n.cluster.State().ClusterID}
	if !n.cfg.Witness {
		var st syscall.Statfs_t
		if syscall.Statfs(n.cfg.DataDir, &st) == nil {
			m.CapacityBytes = int64(st.Blocks) * st.Bsize
			m.FreeBytes = int64(st.Bavail) * st.Bsize
		}
	}
	return m
}

func (n *Node) startMembership(ctx context.Context) error {
	m, err := membership.Start(membership.Config{Name: n.cfg.Name, Bind: n.cfg.Cluster,
		SecretKey: n.key.Derive("tandem memberlist", 32), Meta: n.meta(), Logger: n.log})
	if err != nil {
		return fmt.Errorf("gossip on %s: %w", n.cfg.Cluster, err)
	}
	n.members = m
	if len(n.cfg.Join) > 0 {
		n.goRun(func() { n.joinLoop(ctx) })
	}
	n.goRun(func() { n.rejoinLoop(ctx) })
	return nil
}

// rejoinLoop joins the gossip of catalog nodes the gossip does not see
// alive: a node restarted without --join (the cluster's first) finds the
// others again, and two halves of a healed partition merge.
func (n *Node) rejoinLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		alive := map[string]bool{}
		for _, m := range n.members.Members() {
			if m.State == membership.StateAlive {
				alive[m.Name] = true
			}
		}
		var addrs []string
		for name, node := range n.cluster.State().Nodes {
			if name != n.cfg.Name && !alive[name] && node.Gossip != "" {
				addrs = append(addrs, node.Gossip)
			}
		}
		if len(addrs) == 0 {
			continue
		}
		jctx, cancel := context.WithTimeout(ctx, time.Second)
		if k, err := n.members.Join(jctx, addrs); k > 0 {
			n.log.Debug("gossip rejoined catalog nodes", "reached", k)
		} else if err != nil {
			n.log.Debug("catalog nodes not reachable by gossip", "addrs", addrs, "err", err)
		}
		cancel()
	}
}

// joinLoop joins the gossip through --join, retrying until one answers.
func (n *Node) joinLoop(ctx context.Context) {
	delay := 500 * time.Millisecond
	for {
		jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		k, err := n.members.Join(jctx, n.cfg.Join)
		cancel()
		if err == nil || k > 0 {
			n.log.Info("joined the cluster's gossip", "through", n.cfg.Join, "reached", k)
			return
		}
		n.log.Warn("cannot join the cluster yet; retrying", "through", n.cfg.Join, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

// gossipCapacity keeps the gossiped metadata (free space, cluster ID)
// current.
func (n *Node) gossipCapacity(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	last := n.meta()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.cluster.Changes():
			n.wake()
			n.wakeControl()
		case <-n.members.Changes():
			n.wake()
			n.wakeControl()
		}
		if m := n.meta(); metaChanged(last, m) {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := n.members.SetMeta(sctx, m)
			cancel()
			if err != nil {
				n.log.Warn("gossip metadata not updated", "err", err)
				continue
			}
			last = m
		}
	}
}

// metaChanged says whether new is worth gossiping over old: an address,
// role or cluster change, or free space moving by 1% of the capacity (or
// 64 MiB) — not every few blocks written.
func metaChanged(old, new membership.Meta) bool {
	o, n := old, new
	o.FreeBytes, n.FreeBytes = 0, 0
	if o != n {
		return true
	}
	d := old.FreeBytes - new.FreeBytes
	if d < 0 {
		d = -d
	}
	return d > max(new.CapacityBytes/100, 64<<20)
}

func (n *Node) wakeControl() {
	select {
	case n.controlKick <- struct{}{}:
	default:
	}
}

// controlLoop runs the leader's duties: name a new cluster and bring in
// the volumes its first node already had; admit nodes that join the
// gossip (voters while there are fewer than five); keep node addresses
// current.
func (n *Node) controlLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if n.cluster.IsLeader() {
			if err := n.lead(ctx); err != nil && ctx.Err() == nil {
				n.log.Warn("leader duty not done; retrying", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-n.controlKick:
		}
	}
}

func (n *Node) lead(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st := n.cluster.State()
	if st.ClusterID == "" {
		id := make([]byte, 16)
		rand.Read(id)
		if _, err := n.cluster.Propose(ctx, cluster.Init{ClusterID: hex.EncodeToString(id), LeaseMS: n.cfg.Lease.Milliseconds()}); err != nil && !errors.Is(err, cluster.ErrExists) {
			return fmt.Errorf("naming the cluster: %w", err)
		}
		st = n.cluster.State()
	}
	self := cluster.Node{Name: n.cfg.Name, Role: n.role(), Gossip: n.cfg.Cluster, Link: n.cfg.LinkAddr(), Portal: n.cfg.Portal, API: n.cfg.API}
	if rec, ok := st.Nodes[n.cfg.Name]; !ok || !sameAddrs(rec, self) || rec.Port == 0 {
		self.Port = rec.Port
		if self.Port == 0 {
			self.Port = st.NextPort()
		}
		if err := n.cluster.Admit(ctx, self); err != nil {
			n.log.Warn("this node's record in the catalog not updated; retrying", "err", err)
		}
		st = n.cluster.State()
	}
	if err := n.importLocal(ctx, st); err != nil {
		return err
	}
	servers, err := n.cluster.Servers()
	if err != nil {
		return err
	}
	for _, m := range n.members.Members() {
		if m.State != membership.StateAlive || m.Name == n.cfg.Name {
			continue
		}
		if m.Meta.Cluster != "" && m.Meta.Cluster != st.ClusterID {
			if !n.warned[m.Name+"/"+m.Meta.Cluster] {
				n.warned[m.Name+"/"+m.Meta.Cluster] = true
				n.log.Warn("a node of another cluster gossips with this one; not admitted (it has raft state of its own: start it with an empty data directory to join)",
					"node", m.Name, "its_cluster", m.Meta.Cluster)
			}
			continue
		}
		want := cluster.Node{Name: m.Name, Role: cluster.Role(m.Meta.Role), Gossip: m.Addr, Link: m.Meta.Link, Portal: m.Meta.Portal, API: m.Meta.API}
		rec, known := st.Nodes[m.Name]
		inRaft := slices.ContainsFunc(servers, func(s cluster.Server) bool { return s.ID == m.Name && s.Address == m.Meta.Link })
		if known && inRaft && sameAddrs(rec, want) && rec.Port != 0 {
			continue
		}
		// Its target port number: the one it has, else the next (a
		// refused one, taken meanwhile, is given again on the next pass).
		want.Port = rec.Port
		if want.Port == 0 {
			st = n.cluster.State()
			want.Port = st.NextPort()
		}
		if err := n.cluster.Admit(ctx, want); err != nil {
			n.log.Warn("node not admitted", "node", m.Name, "err", err)
			continue
		}
		n.log.Info("node admitted to the cluster", "node", m.Name, "role", want.Role, "link", want.Link)
	}
	return nil
}

func sameAddrs(a, b cluster.Node) bool {
	return a.Role == b.Role && a.Gossip == b.Gossip && a.Link == b.Link && a.Portal == b.Portal && a.API == b.API
}

// importLocal brings the volumes of a node that ran alone before it was a
// cluster (or before this version) into the catalog, with their identities,
// snapshots and reservations. Only while this is the cluster's only node:
// a node of a larger cluster never adds what it finds on its disk.
func (n *Node) importLocal(ctx context.Context, st cluster.State) error {
	if len(st.Nodes) != 1 {
		return nil
	}
	infos := n.store.List()
	sources := map[string]*cluster.CloneSource{} // clone name -> its source
	for _, info := range infos {
		for _, s := range info.Snapshots {
			for _, c := range s.Clones {
				sources[c] = &cluster.CloneSource{Volume: info.Name, Snapshot: s.Name}
			}
		}
	}
	// Sources before their clones.
	slices.SortStableFunc(infos, func(a, b volume.Info) int {
		return cloneDepth(sources, a.Name) - cloneDepth(sources, b.Name)
	})
	for _, info := range infos {
		if _, ok := st.Volumes[info.Name]; ok || st.Deleted(info.ID) || info.Error != "" {
			continue
		}
		prs, err := n.store.Reservations(info.Name)
		if err != nil {
			return err
		}
		pr, err := prs.LoadReservations()
		if err != nil {
			return err
		}
		imp := cluster.ImportVolume{Volume: cluster.Volume{
			Name: info.Name, ID: info.ID, NAA: info.NAA, Serial: info.Serial, Size: info.Size, Created: info.Created,
			Export: cluster.Export{CHAPUser: info.Export.CHAPUser, CHAPSecret: info.Export.CHAPSecret, MutualUser: info.Export.MutualUser, MutualSecret: info.Export.MutualSecret, Allow: info.Export.Allow},
			Copies: 1, Placement: []string{n.cfg.Name}, Primary: n.cfg.Name, Epoch: 1, InSync: []string{n.cfg.Name},
			CopyIDs:      map[string]string{n.cfg.Name: info.CopyID},
			Reservations: pr,
		}}
		for _, s := range info.Snapshots {
			// The local snapshot's ID as it is ("" for one taken before the
			// cluster): every copy's must match the catalog's.
			imp.Volume.Snapshots = append(imp.Volume.Snapshots, cluster.Snapshot{Name: s.Name, ID: s.ID, Created: s.Created, Size: s.Size})
		}
		imp.Volume.Source = sources[info.Name]
		if _, err := n.cluster.Propose(ctx, imp); err != nil {
			return fmt.Errorf("bringing volume %q into the catalog: %w", info.Name, err)
		}
		n.log.Info("local volume brought into the cluster catalog", "volume", info.Name, "id", info.ID)
	}
	return nil
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// cloneDepth is how many clones deep a volume is (0 for an original).
func cloneDepth(sources map[string]*cluster.CloneSource, name string) int {
	d := 0
	for src := sources[name]; src != nil && d < 1000; src = sources[src.Volume] {
		d++
	}
	return d
}
