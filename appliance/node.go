package appliance

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"tandem.io/tandem/appliance/admin"
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

	// mu serializes serving and unserving targets (create, clone, delete);
	// it is never held while the store waits for a volume's operation.
	mu sync.Mutex

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
	return &Node{cfg: cfg, log: cfg.Logger, lus: make(map[[16]byte]servedLU), targets: make(map[string]*scsi.Target)}, nil
}

// Run serves until ctx is cancelled, then stops cleanly: the admin API
// stops, initiators are asked to log out, data is flushed. It returns nil
// after a clean stop.
func (n *Node) Run(ctx context.Context) error {
	store, err := volume.Open(ctx, volume.Config{Dir: n.cfg.DataDir, Logger: n.log, FS: n.cfg.FS, AllowCrashUnsafe: n.cfg.AllowUnsafeFilesystem})
	if err != nil {
		return err
	}
	n.store = store
	srv, err := iscsi.NewServer(iscsi.Config{Logger: n.log})
	if err != nil {
		store.Close()
		return err
	}
	n.iscsi = srv
	for _, v := range store.List() {
		if err := n.serve(v); err != nil {
			// E.g. its reservation state cannot be read: serving it
			// without its reservations could let a fenced host write.
			n.log.Error("volume not served", "volume", v.Name, "err", err)
			v.Error = err.Error()
			if err := n.serve(v); err != nil {
				n.log.Error("volume has no target", "volume", v.Name, "err", err)
			}
		}
	}
	portal, err := net.Listen("tcp", n.cfg.Portal)
	if err != nil {
		store.Close()
		return fmt.Errorf("iSCSI portal %s: %w", n.cfg.Portal, err)
	}
	apiLn, err := net.Listen("tcp", n.cfg.API)
	if err != nil {
		portal.Close()
		store.Close()
		return fmt.Errorf("admin API %s: %w", n.cfg.API, err)
	}
	api := &http.Server{Handler: admin.Handler(n, n.log), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(portal); !errors.Is(err, iscsi.ErrServerClosed) {
			errc <- err
		}
	}()
	go func() {
		defer wg.Done()
		if err := api.Serve(apiLn); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin API: %w", err)
		}
	}()
	n.log.Info("tandem node serving", "node", n.cfg.Name, "portal", n.cfg.Portal, "api", n.cfg.API,
		"data", n.cfg.DataDir, "volumes", len(store.List()))
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	n.log.Info("tandem node shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := api.Shutdown(sctx); err != nil {
		n.log.Warn("admin API requests still running at shutdown were cut off", "err", err)
	}
	if err := srv.Shutdown(sctx); err != nil {
		n.log.Warn("initiators did not all log out in time; connections closed", "err", err)
	}
	wg.Wait()
	if err := store.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("closing volumes: %w", err)
	}
	n.log.Info("tandem node stopped")
	return runErr
}

func (n *Node) iqn(volume string) string { return n.cfg.IQNPrefix + ":" + volume }

// serve exports a volume as target <prefix>:<name>, LUN 0. A volume that
// cannot be served (damaged data or record) is still a target, listed by
// discovery, whose logins are refused with Service Unavailable: the
// initiator is told the target exists and why it cannot log in, and the
// node log says what is wrong.
func (n *Node) serve(v volume.Info) error {
	if v.Error != "" {
		return n.iscsi.AddTarget(iscsi.TargetConfig{Name: n.iqn(v.Name), Unavailable: v.Error})
	}
	dev, err := n.store.Device(v.Name)
	if err != nil {
		return err
	}
	prs, err := n.store.Reservations(v.Name)
	if err != nil {
		return err
	}
	lu, err := scsi.NewLogicalUnit(scsi.LUConfig{Device: dev, NAA: v.NAA, Serial: v.Serial, Logger: n.log, Reservations: prs, Copy: n})
	if err != nil {
		return err
	}
	n.lusMu.Lock()
	n.lus[v.NAA] = servedLU{lu: lu, iqn: n.iqn(v.Name)}
	n.lusMu.Unlock()
	t, err := scsi.NewTarget(scsi.TargetConfig{LUNs: map[uint64]*scsi.LogicalUnit{0: lu}, Logger: n.log})
	if err != nil {
		return err
	}
	n.lusMu.Lock()
	n.targets[v.Name] = t
	n.lusMu.Unlock()
	e := v.Export
	return n.iscsi.AddTarget(iscsi.TargetConfig{Name: n.iqn(v.Name), SCSI: t, Auth: iscsi.Auth{
		CHAPUser: e.CHAPUser, CHAPSecret: e.CHAPSecret, MutualUser: e.MutualUser, MutualSecret: e.MutualSecret,
		AllowedInitiators: e.Allow,
	}})
}

// NodeName implements admin.Backend.
func (n *Node) NodeName() string { return n.cfg.Name }

func (n *Node) describe(v volume.Info) admin.Volume {
	iqn := n.iqn(v.Name)
	out := admin.Volume{
		Name: v.Name, IQN: iqn, Portal: n.cfg.Portal, URL: fmt.Sprintf("iscsi://%s/%s/0", n.cfg.Portal, iqn),
		Size: v.Size, AllocatedBytes: v.AllocatedBytes, NAA: hex.EncodeToString(v.NAA[:]), Serial: v.Serial,
		Created: v.Created, CHAPUser: v.Export.CHAPUser, CHAP: v.Export.CHAPSecret != "",
		MutualCHAP: v.Export.MutualSecret != "", Allow: v.Export.Allow, Sessions: []admin.Session{}, Error: v.Error,
		Snapshots: []admin.Snapshot{},
	}
	for _, s := range v.Snapshots {
		out.Snapshots = append(out.Snapshots, admin.Snapshot{Name: s.Name, Created: s.Created, Size: s.Size, OwnBytes: s.OwnBytes, Clones: s.Clones})
	}
	if out.Allow == nil {
		out.Allow = []string{}
	}
	for _, s := range n.iscsi.Sessions(iqn) {
		out.Sessions = append(out.Sessions, admin.Session{Initiator: s.Initiator, ISID: s.ISID, TSIH: s.TSIH,
			Connections: s.Connections, Since: s.Since})
	}
	return out
}

// ListVolumes implements admin.Backend.
func (n *Node) ListVolumes(ctx context.Context) []admin.Volume {
	vols := n.store.List()
	out := make([]admin.Volume, 0, len(vols))
	for _, v := range vols {
		out = append(out, n.describe(v))
	}
	return out
}

// GetVolume implements admin.Backend.
func (n *Node) GetVolume(ctx context.Context, name string) (admin.Volume, error) {
	v, err := n.store.Get(name)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	return n.describe(v), nil
}

// CreateVolume implements admin.Backend.
func (n *Node) CreateVolume(ctx context.Context, req admin.CreateVolumeRequest) (admin.Volume, error) {
	size, err := sizeBytes(req.Size)
	if err != nil {
		return admin.Volume{}, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	v, err := n.store.Create(ctx, volume.Spec{Name: req.Name, Size: size, Export: volume.Export{
		CHAPUser: req.CHAPUser, CHAPSecret: req.CHAPSecret, MutualUser: req.MutualUser, MutualSecret: req.MutualSecret,
		Allow: req.Allow,
	}})
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	return n.serveNew(ctx, v)
}

// serveNew serves a volume just created (or cloned); if it cannot be
// served it is deleted again.
func (n *Node) serveNew(ctx context.Context, v volume.Info) (admin.Volume, error) {
	if err := n.serve(v); err != nil {
		if derr := n.store.Delete(ctx, v.Name, nil); derr != nil {
			n.log.Error("a volume that could not be served could not be deleted either", "volume", v.Name, "err", derr)
		}
		return admin.Volume{}, fmt.Errorf("serving volume %q: %w", v.Name, err)
	}
	return n.describe(v), nil
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

// DeleteVolume implements admin.Backend. The target stops being served
// once the store holds the volume's op slot (after any operation under way
// on it, and only if the volume may be deleted); if the deletion then fails,
// it is served again.
func (n *Node) DeleteVolume(ctx context.Context, name string) error {
	v, err := n.store.Get(name)
	if err != nil {
		return apiError(err)
	}
	unserved := false
	err = n.store.Delete(ctx, name, func() error {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.lusMu.Lock()
		delete(n.lus, v.NAA)
		delete(n.targets, name)
		n.lusMu.Unlock()
		unserved = true
		if err := n.iscsi.RemoveTarget(n.iqn(name)); err != nil && !errors.Is(err, iscsi.ErrNoSuchTarget) {
			return err
		}
		return nil
	})
	if err != nil && unserved {
		n.mu.Lock()
		defer n.mu.Unlock()
		if serr := n.serve(v); serr != nil {
			n.log.Error("a volume whose deletion failed could not be served again", "volume", name, "err", serr)
		}
	}
	return apiError(err)
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

// CreateSnapshot implements admin.Backend.
func (n *Node) CreateSnapshot(ctx context.Context, vol, name string) (admin.Snapshot, error) {
	s, err := n.store.Snapshot(ctx, vol, name)
	if err != nil {
		return admin.Snapshot{}, apiError(err)
	}
	return admin.Snapshot{Name: s.Name, Created: s.Created}, nil
}

// DeleteSnapshot implements admin.Backend.
// The store orders operations on one volume; a long merge holds up only
// that volume's, so no node-wide lock is taken.
func (n *Node) DeleteSnapshot(ctx context.Context, vol, snapshot string) error {
	return apiError(n.store.DeleteSnapshot(ctx, vol, snapshot))
}

// RevertVolume implements admin.Backend: refused while initiators are
// logged in, unless req.Force, which closes their sessions first (their
// next login sees the unit attention of a new I_T nexus). The check runs
// once the store holds the volume's op slot, right before the revert.
func (n *Node) RevertVolume(ctx context.Context, vol string, req admin.RevertRequest) error {
	iqn := n.iqn(vol)
	err := n.store.Revert(ctx, vol, req.Snapshot, func() error {
		sessions := n.iscsi.Sessions(iqn)
		if len(sessions) == 0 {
			return nil
		}
		if !req.Force {
			var who []string
			for _, s := range sessions {
				who = append(who, s.Initiator)
			}
			return fmt.Errorf("%w: volume %q has %d initiator session(s) logged in (%s): log them out first, or use --force to close them",
				admin.ErrConflict, vol, len(sessions), strings.Join(who, ", "))
		}
		if err := n.iscsi.CloseSessions(iqn); err != nil && !errors.Is(err, iscsi.ErrNoSuchTarget) {
			return err
		}
		return nil
	})
	if err != nil {
		return apiError(err)
	}
	n.unitAttention(vol, scsi.ASCMediumChanged)
	return nil
}

// CloneVolume implements admin.Backend.
// The clone itself may wait for an operation on the source (a merge); the
// node lock is taken only to serve the new volume.
func (n *Node) CloneVolume(ctx context.Context, source string, req admin.CloneRequest) (admin.Volume, error) {
	v, err := n.store.Clone(ctx, source, req.Snapshot, volume.Spec{Name: req.Name})
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.serveNew(ctx, v)
}

// ResizeVolume implements admin.Backend.
func (n *Node) ResizeVolume(ctx context.Context, vol string, size admin.Size) (admin.Volume, error) {
	bytes, err := sizeBytes(size)
	if err != nil {
		return admin.Volume{}, err
	}
	v, err := n.store.Resize(ctx, vol, bytes)
	if err != nil {
		return admin.Volume{}, apiError(err)
	}
	n.unitAttention(vol, scsi.ASCCapacityChanged)
	return n.describe(v), nil
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
