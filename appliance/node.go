package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/appliance/floating"
	"tandem.io/tandem/appliance/lease"
	"tandem.io/tandem/appliance/membership"
	"tandem.io/tandem/replication"
	"tandem.io/tandem/replication/link"
	"tandem.io/tandem/target/iscsi"
	"tandem.io/tandem/target/scsi"
	"tandem.io/tandem/volume"
)

// Node is one running Tandem node.
type Node struct {
	cfg   Config
	log   *slog.Logger
	store *volume.Store
	iscsi *iscsi.Server
	// port is the target port number the iSCSI server has (setTargetPort),
	// 0 before the catalog gave this node one.
	port atomic.Uint32
	// floatingIP is the floating portal address, invalid without one.
	floatingIP netip.Addr

	// Cluster machinery, set up by Run.
	key     link.Key
	links   *link.Listener
	cluster *cluster.Cluster
	members *membership.Membership
	repl    *replication.Server
	metrics *metrics

	// ctx lives as long as Run: mirrors and background work run in it.
	ctx context.Context
	wg  sync.WaitGroup // background goroutines Run waits for

	// mu protects vols.
	mu sync.Mutex
	// vols is what this node does for each volume of the catalog, by
	// name: serve it as the primary, redirect to the primary, or refuse.
	vols map[string]*served

	// refusals are proposals the catalog refused, by key, and when.
	refusals map[string]time.Time
	// warned remembers what the control loop warned about once.
	warned map[string]bool

	// busy are the volumes with a background operation (background).
	busy map[string]bool

	// owed are the volume IDs whose local copy must get a new copy ID
	// before it stands for anything (renewCopy could not give it one yet).
	owed map[string]bool
	// renewWait bounds a copy renewal's wait for the store (0: 30 s).
	renewWait time.Duration

	// leases: this node's lease, and on the leader the grants (failover.go).
	leases leaseState
	// noGate serves primaries without the lease gate: tests of the layers
	// under it (epochs, fencing, copy renewal) only.
	noGate atomic.Bool

	// wired is set once Run has set up the cluster machinery.
	wired atomic.Bool
	// ready is set after the first reconciliation in a cluster.
	ready atomic.Bool

	// kick wakes the reconciler, controlKick the leader's control loop.
	kick, controlKick chan struct{}

	lusMu sync.RWMutex // protects lus and targets
	// lus are the served logical units by NAA, for EXTENDED COPY between
	// volumes of this node.
	lus map[[16]byte]servedLU
	// targets are the SCSI targets by volume name (unit attentions).
	targets map[string]*scsi.Target
}

// servedLU is a served logical unit and the iSCSI target serving it.
type servedLU struct {
	lu  *scsi.LogicalUnit
	iqn string
}

// LocateLU implements scsi.CopyLocator: a volume of this node, reached
// only through the copying initiator's own sessions to its target (see
// copyNexuses).
func (n *Node) LocateLU(naa [16]byte, from scsi.Nexus) (*scsi.LogicalUnit, []scsi.Nexus) {
	n.lusMu.RLock()
	s, ok := n.lus[naa]
	n.lusMu.RUnlock()
	if !ok {
		return nil, nil
	}
	via := copyNexuses(n.iscsi.SessionNexuses(), from, s.iqn)
	if len(via) == 0 {
		return nil, nil
	}
	return s.lu, via
}

// copyNexuses returns the nexuses through which the initiator of from, an
// EXTENDED COPY's own nexus, may reach target in the copy, preferred (the
// same initiator port) first: those of the sessions logged in to target
// with the same initiator name, from the same host as from's session.
//
// Logged in means the session passed the target's CHAP and allow list, so
// a copy reaches no unit its initiator could not reach itself. The same
// host, because an initiator name is only a claim: an initiator that
// borrowed the name of one logged in to a CHAP-protected volume, and sent
// the copy to an open volume, would otherwise reach the protected one
// without its secret. An initiator logged in to both volumes from one
// host (ESX logs in to every target through each of its iSCSI ports)
// finds its session from the same host.
func copyNexuses(sessions []iscsi.SessionNexus, from scsi.Nexus, target string) []scsi.Nexus {
	var own *iscsi.SessionNexus
	for i := range sessions {
		if sessions[i].Nexus.InitiatorPort == from.InitiatorPort && sessions[i].Nexus.TargetPort == from.TargetPort {
			own = &sessions[i]
			break
		}
	}
	if own == nil {
		return nil
	}
	host := hostOf(own.RemoteAddr)
	var via []scsi.Nexus
	for _, s := range sessions {
		if s.Target == target && strings.EqualFold(s.Initiator, own.Initiator) && host != "" && hostOf(s.RemoteAddr) == host {
			via = append(via, s.Nexus)
		}
	}
	// The same initiator port (ISID) first.
	sort.SliceStable(via, func(i, j int) bool {
		return via[i].InitiatorPort == from.InitiatorPort && via[j].InitiatorPort != from.InitiatorPort
	})
	return via
}

// hostOf is the host part of a host:port address, "" if there is none.
func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return host
}

var _ admin.Backend = (*Node)(nil)

// New checks cfg and returns a node ready to Run.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Node{cfg: cfg, log: cfg.Logger, leases: leaseState{holder: lease.NewHolder()}, lus: make(map[[16]byte]servedLU), targets: make(map[string]*scsi.Target),
		vols: make(map[string]*served), busy: make(map[string]bool), owed: make(map[string]bool), warned: make(map[string]bool), refusals: make(map[string]time.Time), kick: make(chan struct{}, 1), controlKick: make(chan struct{}, 1)}, nil
}

// Run serves until ctx is cancelled, then stops cleanly: the admin API
// stops, initiators are asked to log out, the node leaves the gossip, data
// is flushed. It returns nil after a clean stop.
//
// Start order: the local store; the cluster key; the link listener (raft,
// replication, forwarded proposals); raft (a node without --join and
// without raft state starts a cluster of its own); the replication server;
// gossip (joining through --join); the iSCSI portal and the admin API; the
// reconciler, which makes what this node serves follow the catalog.
func (n *Node) Run(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.ctx = ctx
	var closers []func()
	defer func() {
		cancel()
		n.wg.Wait()
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()

	store, err := volume.Open(ctx, volume.Config{Dir: n.cfg.DataDir, Logger: n.log, FS: n.cfg.FS, AllowCrashUnsafe: n.cfg.AllowUnsafeFilesystem})
	if err != nil {
		return err
	}
	n.store = store
	closers = append(closers, func() {
		if cerr := store.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing volumes: %w", cerr)
		}
	})
	if n.cfg.Witness && len(store.List()) > 0 {
		return fmt.Errorf("a witness holds no volumes, but %s has %d: use another data directory", n.cfg.DataDir, len(store.List()))
	}
	if n.key, err = n.cfg.clusterKey(); err != nil {
		return err
	}
	var fl *floating.Address
	if n.cfg.FloatingAddress != "" {
		prefix, _ := floating.ParsePrefix(n.cfg.FloatingAddress) // checked by Validate
		n.floatingIP = prefix.Addr()
		if fl, err = floating.New(floating.Config{Prefix: prefix, Interface: n.cfg.FloatingInterface, Logger: n.log}); err != nil {
			return err
		}
	}
	n.metrics = newMetrics(n)
	lcfg := n.linkConfig()
	n.links, err = link.Listen(n.cfg.LinkAddr(), lcfg)
	if err != nil {
		return fmt.Errorf("cluster links on %s: %w", n.cfg.LinkAddr(), err)
	}
	closers = append(closers, func() { n.links.Close() })

	if err := n.startCluster(ctx); err != nil {
		return err
	}
	closers = append(closers, func() {
		if cerr := n.cluster.Close(); cerr != nil {
			n.log.Warn("raft did not stop cleanly", "err", cerr)
		}
	})
	if n.repl, err = replication.NewServer(replication.ServerConfig{Copies: replicaCopies{n}, Epochs: storeEpochs{n.store}, Logger: n.log}); err != nil {
		return err
	}
	closers = append(closers, func() { n.repl.Close() })
	n.goRun(func() { n.repl.Serve(ctx, n.links.Accept(link.PurposeReplication)) })

	if err := n.startMembership(ctx); err != nil {
		return err
	}
	closers = append(closers, func() {
		lctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := n.members.Leave(lctx); err != nil {
			n.log.Debug("leaving the gossip", "err", err)
		}
		n.members.Close()
	})

	n.wired.Store(true)
	srv, err := iscsi.NewServer(iscsi.Config{Logger: n.log})
	if err != nil {
		return err
	}
	n.iscsi = srv
	portal, err := net.Listen("tcp", n.cfg.Portal)
	if err != nil {
		return fmt.Errorf("iSCSI portal %s: %w", n.cfg.Portal, err)
	}
	apiLn, err := net.Listen("tcp", n.cfg.API)
	if err != nil {
		portal.Close()
		return fmt.Errorf("admin API %s: %w", n.cfg.API, err)
	}
	api := &http.Server{Handler: admin.Handler(n, n.log), ReadHeaderTimeout: 10 * time.Second,
		// Requests end with the node: an operation waiting for a lock or
		// a quorum does not hold the shutdown up.
		BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 2)
	var srvWG sync.WaitGroup
	srvWG.Add(2)
	go func() {
		defer srvWG.Done()
		if err := srv.Serve(portal); !errors.Is(err, iscsi.ErrServerClosed) {
			errc <- err
		}
	}()
	go func() {
		defer srvWG.Done()
		if err := api.Serve(apiLn); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin API: %w", err)
		}
	}()
	n.goRun(func() { n.reconcileLoop(ctx) })
	n.goRun(func() { n.controlLoop(ctx) })
	n.goRun(func() { n.leaseLoop(ctx) })
	n.goRun(func() { n.failoverLoop(ctx) })
	if fl != nil {
		n.goRun(func() { n.floatingLoop(ctx, fl) })
	}
	n.goRun(func() { n.gossipCapacity(ctx) })
	n.log.Info("tandem node serving", "node", n.cfg.Name, "portal", n.cfg.Portal, "api", n.cfg.API,
		"cluster", n.cfg.Cluster, "link", n.cfg.LinkAddr(), "data", n.cfg.DataDir, "witness", n.cfg.Witness)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	n.log.Info("tandem node shutting down")
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := api.Shutdown(sctx); err != nil {
		n.log.Warn("admin API requests still running at shutdown were cut off", "err", err)
		api.Close()
	}
	if err := srv.Shutdown(sctx); err != nil {
		n.log.Warn("initiators did not all log out in time; connections closed", "err", err)
	}
	srvWG.Wait()
	cancel()
	n.wg.Wait()
	n.unserveAll()
	n.log.Info("tandem node stopped")
	return runErr
}

// goRun runs fn in a goroutine Run waits for.
func (n *Node) goRun(fn func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
}

func (n *Node) linkConfig() link.Config {
	return link.Config{Key: n.key, Name: n.cfg.Name, Insecure: n.cfg.InsecureLinks, Logger: n.log}
}

func (n *Node) iqn(volume string) string { return n.cfg.IQNPrefix + ":" + volume }

// Health implements admin.Backend: ready once the node is part of a
// cluster and has reconciled its volumes once.
func (n *Node) Health() admin.Health {
	h := admin.Health{Status: "starting", Node: n.cfg.Name}
	if !n.wired.Load() {
		return h
	}
	h.Cluster = n.cluster.State().ClusterID
	h.Leader, _ = n.cluster.Leader()
	switch {
	case h.Cluster == "":
		h.Status = "joining"
	case n.ready.Load():
		h.Status = "ok"
	}
	return h
}

// sizeBytes is an admin size in bytes ("10GiB" or a number).
func sizeBytes(sz admin.Size) (int64, error) {
	if sz.Text == "" {
		return sz.Bytes, nil
	}
	b, err := volume.ParseSize(sz.Text)
	if err != nil {
		return 0, apiError(err)
	}
	return b, nil
}

// apiError classifies store errors for the admin API.
func apiError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, volume.ErrNotFound):
		return fmt.Errorf("%w: %v", admin.ErrNotFound, err)
	case errors.Is(err, volume.ErrExists), errors.Is(err, volume.ErrInUse):
		return fmt.Errorf("%w: %v", admin.ErrConflict, err)
	case errors.Is(err, volume.ErrInvalidName), errors.Is(err, volume.ErrInvalidSize), errors.Is(err, volume.ErrShrink):
		return fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	return err
}

// unitAttention establishes a unit attention for every nexus of a volume.
func (n *Node) unitAttention(vol string, asc uint16) {
	n.lusMu.RLock()
	t := n.targets[vol]
	n.lusMu.RUnlock()
	if t != nil {
		t.UnitAttention(asc)
	}
}
