package appliance

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/appliance/cluster"
	"tandem.io/tandem/appliance/membership"
	"tandem.io/tandem/replication"
	"tandem.io/tandem/target/iscsi"
	"tandem.io/tandem/target/scsi"
	"tandem.io/tandem/volume"
)

// The admin API on any node takes every command. Changes to the catalog
// alone run on the raft leader (a follower forwards the request to the
// leader's admin API); operations on a volume's data (snapshot, revert,
// resize, move, verify) run on the volume's primary, which orders them in
// the write stream.

var _ admin.Backend = (*Node)(nil)

// clientOf is an admin API client of a node of the catalog, for a
// request this node forwards: the receiver never forwards it again.
func (n *Node) clientOf(node string) (*admin.Client, error) {
	rec, ok := n.cluster.State().Nodes[node]
	if !ok || rec.API == "" {
		return nil, fmt.Errorf("node %q is not in the catalog", node)
	}
	return &admin.Client{BaseURL: "http://" + rec.API, HTTPClient: &http.Client{Timeout: 10 * time.Minute}, Forwarded: n.cfg.Name}, nil
}

// forwardTo returns a client of node for a request ctx carries, or an
// error if the request was forwarded here already: a second hop means the
// nodes disagree (a leader change, a move under way) or a node's recorded
// API address leads elsewhere; the caller retries instead of the request
// going round.
func (n *Node) forwardTo(ctx context.Context, node, role string) (*admin.Client, error) {
	if from := admin.ForwardedBy(ctx); from != "" {
		return nil, fmt.Errorf("%w: %s forwarded this request to %s, which is not the %s (%s is, by its catalog): retry, or check the nodes' --api addresses",
			errUnavailable, from, n.cfg.Name, role, node)
	}
	return n.clientOf(node)
}

// leader returns nil when this node is the leader, else a client of the
// leader's admin API.
func (n *Node) leader(ctx context.Context) (*admin.Client, error) {
	if n.cluster.IsLeader() {
		return nil, nil
	}
	// A node just started, or an election under way: a leader is
	// usually there within a few seconds.
	id, _ := n.cluster.Leader()
	for wait := time.Now().Add(5 * time.Second); id == "" && time.Now().Before(wait); id, _ = n.cluster.Leader() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if n.cluster.IsLeader() {
		return nil, nil
	}
	if id == "" {
		return nil, fmt.Errorf("%w: %v", errUnavailable, cluster.ErrNoLeader)
	}
	return n.forwardTo(ctx, id, "raft leader")
}

// primaryOf returns nil when this node is v's primary, else a client of
// the primary's admin API.
func (n *Node) primaryOf(ctx context.Context, name string) (*admin.Client, cluster.Volume, error) {
	v, ok := n.cluster.State().Volumes[name]
	if !ok {
		return nil, v, fmt.Errorf("%w: volume %q", admin.ErrNotFound, name)
	}
	if v.Primary == n.cfg.Name {
		return nil, v, nil
	}
	c, err := n.forwardTo(ctx, v.Primary, "primary of volume "+name)
	return c, v, err
}

// errUnavailable: the cluster cannot do it now (no leader, primary
// unreachable); the admin API answers 503.
var errUnavailable = admin.ErrUnavailable

// remote maps an error from another node's admin API back to the
// sentinel that chooses the HTTP status.
func remote(err error) error {
	var ae *admin.APIError
	if !errors.As(err, &ae) {
		if errors.Is(err, admin.ErrUnreachable) {
			what, _, _ := strings.Cut(err.Error(), ";") // not the CLI's advice about --api
			return fmt.Errorf("%w: the node that must do this does not answer (is it down? a volume whose primary is down waits for it to come back): %s",
				errUnavailable, what)
		}
		if err != nil {
			return fmt.Errorf("%w: %v", errUnavailable, err)
		}
		return nil
	}
	switch ae.Status {
	case http.StatusNotFound:
		return fmt.Errorf("%w: %s", admin.ErrNotFound, ae.Message)
	case http.StatusConflict:
		return fmt.Errorf("%w: %s", admin.ErrConflict, ae.Message)
	case http.StatusBadRequest:
		return fmt.Errorf("%w: %s", admin.ErrInvalid, ae.Message)
	case http.StatusServiceUnavailable:
		return fmt.Errorf("%w: %s", errUnavailable, ae.Message)
	}
	return errors.New(ae.Message)
}

// propose commits a catalog change, mapping its refusals for the API.
func (n *Node) propose(ctx context.Context, cmd cluster.Command) error {
	_, err := n.cluster.Propose(ctx, cmd)
	return catalogError(err)
}

func catalogError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrNotFound):
		return fmt.Errorf("%w: %v", admin.ErrNotFound, err)
	case errors.Is(err, cluster.ErrExists), errors.Is(err, cluster.ErrConflict), errors.Is(err, cluster.ErrStaleEpoch),
		errors.Is(err, cluster.ErrNotPrimary):
		return fmt.Errorf("%w: %v", admin.ErrConflict, err)
	case errors.Is(err, cluster.ErrInvalid):
		return fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	case errors.Is(err, cluster.ErrNoLeader):
		return fmt.Errorf("%w: %v", errUnavailable, err)
	case errors.Is(err, cluster.ErrOutcomeUnknown):
		return fmt.Errorf("%w: the change may or may not have been made (look before retrying): %v", errUnavailable, err)
	case errors.Is(err, cluster.ErrTooLarge):
		return fmt.Errorf("%w: %v", admin.ErrInvalid, err)
	}
	return err
}

// describe is the API's view of a volume: the catalog's facts, this
// node's local copy, and, on the primary, the mirror's state and sessions.
func (n *Node) describe(st cluster.State, v cluster.Volume) admin.Volume {
	iqn := n.iqn(v.Name)
	portal := st.Nodes[v.Primary].Portal
	out := admin.Volume{
		Name: v.Name, IQN: iqn, Portal: portal, URL: fmt.Sprintf("iscsi://%s/%s/0", portal, iqn),
		Size: v.Size, NAA: hex.EncodeToString(v.NAA[:]), Serial: v.Serial, Created: v.Created,
		CHAPUser: v.Export.CHAPUser, CHAP: v.Export.CHAPSecret != "", MutualCHAP: v.Export.MutualSecret != "",
		Allow: slices.Clone(v.Export.Allow), Sessions: []admin.Session{}, Snapshots: []admin.Snapshot{},
		Layout: fmt.Sprintf("mirror:%d", v.Copies), Primary: v.Primary, Epoch: v.Epoch, Copies: []admin.Copy{},
		CopiesWanted: v.Copies,
	}
	if out.Allow == nil {
		out.Allow = []string{}
	}
	local, lerr := n.store.Get(v.Name)
	haveLocal := lerr == nil && local.ID == v.ID
	if haveLocal {
		out.AllocatedBytes = local.AllocatedBytes
		if local.Error != "" {
			out.Error = local.Error
		}
	}
	for _, s := range v.Snapshots {
		as := admin.Snapshot{Name: s.Name, Created: s.Created, Size: s.Size}
		for _, o := range st.Volumes {
			if o.Source != nil && o.Source.Volume == v.Name && o.Source.Snapshot == s.Name {
				as.Clones = append(as.Clones, o.Name)
			}
		}
		sort.Strings(as.Clones)
		if haveLocal {
			for _, ls := range local.Snapshots {
				if ls.Name == s.Name {
					as.OwnBytes = ls.OwnBytes
				}
			}
		}
		out.Snapshots = append(out.Snapshots, as)
	}
	var status map[string]replication.ReplicaStatus
	s := n.slot(v.Name)
	if v.Primary == n.cfg.Name {
		if m := s.spread(); m != nil {
			out.Served = s.servedEpoch.Load() == v.Epoch
			status = map[string]replication.ReplicaStatus{}
			for _, r := range m.Status() {
				status[r.Name] = r
			}
		}
		for _, se := range n.iscsi.Sessions(iqn) {
			out.Sessions = append(out.Sessions, admin.Session{Initiator: se.Initiator, ISID: se.ISID, TSIH: se.TSIH,
				Connections: se.Connections, Since: se.Since})
		}
		if why := s.refused.Load(); why != nil && out.Error == "" {
			out.Error = *why
		}
	}
	for _, node := range v.Placement {
		c := admin.Copy{Node: node, Role: "replica", State: "out-of-sync"}
		if node == v.Primary {
			c.Role = "primary"
		}
		if slices.Contains(v.InSync, node) {
			c.State = "in-sync"
		}
		if r, ok := status[node]; ok && c.State != "in-sync" {
			if r.State == replication.Resyncing {
				c.State = "resyncing"
			}
			c.Progress = &admin.Progress{RegionsTotal: r.RegionsToCopy, RegionsCopied: r.RegionsCopied, BytesCopied: r.BytesCopied}
		}
		out.Copies = append(out.Copies, c)
	}
	return out
}

// ListVolumes implements admin.Backend: each volume as its primary
// describes it (allocation, sessions, resync progress: one request per
// other primary node), or from the catalog where the primary does not
// answer within a few seconds.
func (n *Node) ListVolumes(ctx context.Context) []admin.Volume {
	st := n.cluster.State()
	remoteViews := map[string]admin.Volume{}
	if !admin.LocalOnly(ctx) {
		byPrimary := map[string]bool{}
		for _, v := range st.Volumes {
			if v.Primary != n.cfg.Name {
				byPrimary[v.Primary] = true
			}
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for p := range byPrimary {
			c, err := n.clientOf(p)
			if err != nil {
				continue
			}
			c.HTTPClient = &http.Client{Timeout: 3 * time.Second}
			c.LocalOnly = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				vols, err := c.ListVolumes(ctx)
				if err != nil {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, v := range vols {
					if v.Primary == p {
						remoteViews[v.Name] = v
					}
				}
			}()
		}
		wg.Wait()
	}
	out := make([]admin.Volume, 0, len(st.Volumes))
	for _, v := range st.Volumes {
		if rv, ok := remoteViews[v.Name]; ok {
			out = append(out, rv)
			continue
		}
		out = append(out, n.describe(st, v))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// GetVolume implements admin.Backend: the primary's view (with resync
// progress and sessions), or this node's if the primary does not answer.
func (n *Node) GetVolume(ctx context.Context, name string) (admin.Volume, error) {
	if err := n.freshCatalog(ctx); err != nil {
		return admin.Volume{}, err
	}
	st := n.cluster.State()
	v, ok := st.Volumes[name]
	if !ok {
		return admin.Volume{}, fmt.Errorf("%w: volume %q", admin.ErrNotFound, name)
	}
	if v.Primary != n.cfg.Name && !admin.LocalOnly(ctx) {
		c, err := n.clientOf(v.Primary)
		if err != nil {
			return n.describe(st, v), nil
		}
		c.LocalOnly = true
		c.HTTPClient = &http.Client{Timeout: 5 * time.Second}
		if out, err := c.GetVolume(ctx, name); err == nil {
			return out, nil
		}
	}
	return n.describe(st, v), nil
}

// dataNodes are the catalog's data nodes the gossip sees alive.
func (n *Node) dataNodes(st cluster.State) []membership.Member {
	var out []membership.Member
	for _, m := range n.members.Members() {
		if rec, ok := st.Nodes[m.Name]; ok && rec.Role == cluster.RoleData && m.State == membership.StateAlive {
			out = append(out, m)
		}
	}
	return out
}

// place picks the nodes for a new volume's copies: alive data nodes with
// room, those holding the fewest copies and with the most free space first;
// the primary is the chosen node serving the fewest primaries.
func (n *Node) place(st cluster.State, size int64, copies int) ([]string, error) {
	room := min(size, 1<<30)
	held, primaries := map[string]int{}, map[string]int{}
	for _, v := range st.Volumes {
		for _, p := range v.Placement {
			held[p]++
		}
		primaries[v.Primary]++
	}
	var fit []membership.Member
	var why []string
	for _, m := range n.dataNodes(st) {
		if m.Meta.FreeBytes < room {
			why = append(why, fmt.Sprintf("%s has %s free", m.Name, humanSize(m.Meta.FreeBytes)))
			continue
		}
		fit = append(fit, m)
	}
	if len(fit) < copies {
		msg := fmt.Sprintf("%d copies need %d alive data nodes with room; the cluster has %d", copies, copies, len(fit))
		if len(why) > 0 {
			msg += " (" + strings.Join(why, ", ") + ")"
		}
		return nil, fmt.Errorf("%w: %s", admin.ErrConflict, msg)
	}
	sort.Slice(fit, func(i, j int) bool {
		a, b := fit[i], fit[j]
		if held[a.Name] != held[b.Name] {
			return held[a.Name] < held[b.Name]
		}
		if a.Meta.FreeBytes != b.Meta.FreeBytes {
			return a.Meta.FreeBytes > b.Meta.FreeBytes
		}
		return a.Name < b.Name
	})
	chosen := fit[:copies]
	best := 0
	for i, m := range chosen {
		if primaries[m.Name] < primaries[chosen[best].Name] {
			best = i
		}
	}
	out := []string{chosen[best].Name}
	for i, m := range chosen {
		if i != best {
			out = append(out, m.Name)
		}
	}
	return out, nil
}

func humanSize(b int64) string {
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}

// CreateVolume implements admin.Backend, on the leader: placement and
// identity are decided here, committed, and every placed node makes its
// copy. It answers once the primary serves the volume and its copies are
// in sync, or after 30 seconds with where they are.
func (n *Node) CreateVolume(ctx context.Context, req admin.CreateVolumeRequest) (admin.Volume, error) {
	if c, err := n.leader(ctx); err != nil || c != nil {
		if err != nil {
			return admin.Volume{}, err
		}
		v, err := c.CreateVolume(ctx, req)
		return v, remote(err)
	}
	size, err := sizeBytes(req.Size)
	if err != nil {
		return admin.Volume{}, err
	}
	if err := volume.ValidateName(req.Name); err != nil {
		return admin.Volume{}, apiError(err)
	}
	if err := volume.ValidateSize(size); err != nil {
		return admin.Volume{}, apiError(err)
	}
	st := n.cluster.State()
	if _, ok := st.Volumes[req.Name]; ok {
		return admin.Volume{}, fmt.Errorf("%w: volume %q already exists", admin.ErrConflict, req.Name)
	}
	copies := req.Copies
	if req.Layout != "" {
		l, err := replication.ParseLayout(req.Layout)
		if err != nil {
			return admin.Volume{}, fmt.Errorf("%w: %v", admin.ErrInvalid, err)
		}
		if copies != 0 && copies != l.Copies {
			return admin.Volume{}, fmt.Errorf("%w: --copies %d and --layout %s disagree", admin.ErrInvalid, copies, req.Layout)
		}
		copies = l.Copies
	}
	if copies < 0 || copies > replication.MaxCopies {
		return admin.Volume{}, fmt.Errorf("%w: %d copies: use 1 to 5", admin.ErrInvalid, copies)
	}
	if copies == 0 {
		copies = 1
		if data := n.dataNodes(st); len(data) >= 2 {
			copies = 2
		}
	}
	placement, err := n.place(st, size, copies)
	if err != nil {
		return admin.Volume{}, err
	}
	id := volume.NewIdentity()
	err = n.propose(ctx, cluster.CreateVolume{Name: req.Name, ID: id.ID, NAA: id.NAA, Serial: id.Serial, Size: size,
		Created: id.Created, Copies: copies, Placement: placement,
		Export: cluster.Export{CHAPUser: req.CHAPUser, CHAPSecret: req.CHAPSecret, MutualUser: req.MutualUser,
			MutualSecret: req.MutualSecret, Allow: req.Allow}})
	if err != nil {
		return admin.Volume{}, err
	}
	n.log.Info("volume created", "volume", req.Name, "size", size, "placement", placement, "id", id.ID)
	return n.waitInSync(ctx, req.Name)
}

// waitInSync waits (at most 30 s) until every copy of the volume is in
// sync and its primary serves it, and describes it.
func (n *Node) waitInSync(ctx context.Context, name string) (admin.Volume, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := n.GetVolume(ctx, name)
		if err != nil {
			return admin.Volume{}, err
		}
		done := true
		for _, c := range v.Copies {
			if c.State != "in-sync" {
				done = false
			}
		}
		if done && v.Served || time.Now().After(deadline) {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DeleteVolume implements admin.Backend, on the leader: once the deletion
// is committed, the primary stops serving and every node deletes its copy.
func (n *Node) DeleteVolume(ctx context.Context, name string) error {
	if c, err := n.leader(ctx); err != nil || c != nil {
		if err != nil {
			return err
		}
		return remote(c.DeleteVolume(ctx, name))
	}
	gone := n.cluster.State().Volumes[name]
	if err := n.propose(ctx, cluster.DeleteVolume{Name: name}); err != nil {
		return err
	}
	// Served here: its sessions end before the answer, so that an
	// administrator who saw the deletion succeed sees no initiator still
	// writing. A primary elsewhere stops as soon as it applies the commit.
	// A pass holding the slot long (a replica it cannot reach) does it
	// itself when it is done.
	n.mu.Lock()
	s := n.vols[name]
	n.mu.Unlock()
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if s != nil && s.lock(lctx) == nil {
		n.dropGoneSlot(n.cluster.State(), s)
		s.unlock()
	}
	n.wake()
	n.log.Info("volume deleted", "volume", name)
	// The snapshot taken for a clone goes with it: it would pin the
	// source's old data for good, and the same clone could not be asked
	// again. The clone is deleted whatever happens to it.
	if src := gone.Source; src != nil && src.Taken {
		if err := n.DeleteSnapshot(ctx, src.Volume, src.Snapshot); err != nil && !errors.Is(err, admin.ErrNotFound) {
			n.log.Warn("the snapshot taken for a deleted clone was not deleted; delete it by hand",
				"volume", src.Volume, "snapshot", src.Snapshot, "clone", name, "err", err)
		}
	}
	return nil
}

// onPrimary runs fn on the volume's primary, with the volume's slot
// locked and its mirror serving; it is refused while a copy is not in sync
// when needAllInSync (snapshots and reverts must reach every copy).
func (n *Node) onPrimary(ctx context.Context, name string, needAllInSync bool, fn func(v cluster.Volume, s *served) error) error {
	v, ok := n.cluster.State().Volumes[name]
	if !ok {
		return fmt.Errorf("%w: volume %q", admin.ErrNotFound, name)
	}
	s := n.slot(name)
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	v, ok = n.cluster.State().Volumes[name]
	switch {
	case !ok:
		return fmt.Errorf("%w: volume %q", admin.ErrNotFound, name)
	case v.Primary != n.cfg.Name:
		return fmt.Errorf("%w: volume %q: this node is not its primary any more (%s is); retry", errUnavailable, name, v.Primary)
	case s.role != rolePrimary || s.epoch != v.Epoch:
		why := "this node is starting to serve it"
		if s.lastErr != "" {
			why = s.lastErr
		}
		return fmt.Errorf("%w: volume %q is not served yet (%s); retry", errUnavailable, name, why)
	}
	if needAllInSync {
		var out []string
		for _, p := range v.Placement {
			if !slices.Contains(v.InSync, p) {
				out = append(out, p)
			}
		}
		if len(out) > 0 {
			return fmt.Errorf("%w: volume %q: the copies on %s are not in sync; this needs every copy in sync: wait for the resync (volume show), or remove those copies",
				admin.ErrConflict, name, strings.Join(out, ", "))
		}
	}
	return fn(v, s)
}

// CreateSnapshot implements admin.Backend, on the primary: a barrier in the
// write stream takes the snapshot on every copy at the same point, then
// the catalog names it.
func (n *Node) CreateSnapshot(ctx context.Context, vol, name string) (admin.Snapshot, error) {
	c, _, err := n.primaryOf(ctx, vol)
	if err != nil {
		return admin.Snapshot{}, err
	}
	if c != nil {
		s, err := c.CreateSnapshot(ctx, vol, name)
		return s, remote(err)
	}
	if name == "" {
		name = "snap-" + time.Now().UTC().Format("20060102-150405")
	}
	if err := volume.ValidateName(name); err != nil {
		return admin.Snapshot{}, apiError(err)
	}
	var out admin.Snapshot
	err = n.onPrimary(ctx, vol, true, func(v cluster.Volume, s *served) error {
		if slices.ContainsFunc(v.Snapshots, func(cs cluster.Snapshot) bool { return cs.Name == name }) {
			return fmt.Errorf("%w: volume %q already has a snapshot %q", admin.ErrConflict, vol, name)
		}
		// The catalog names it first, pending: no copy drops a snapshot
		// the catalog names, and a pending one a primary did not finish
		// is dropped by the next term.
		snap := cluster.Snapshot{Name: name, ID: randomID(), Created: time.Now().UTC().Truncate(time.Second), Size: v.Size, Pending: true}
		if _, err := n.cluster.Propose(ctx, cluster.AddSnapshot{Volume: vol, Snapshot: snap}); err != nil {
			if !definiteRefusal(err) {
				// Maybe named, pending: drop it rather than leave it.
				n.goRun(func() {
					dctx, cancel := context.WithTimeout(n.ctx, time.Minute)
					defer cancel()
					if _, derr := n.cluster.Propose(dctx, cluster.DeleteSnapshot{Volume: vol, Name: name}); derr != nil && !errors.Is(derr, cluster.ErrNotFound) {
						n.log.Warn("a snapshot whose naming had an unknown outcome may stay pending until the next primary term", "volume", vol, "snapshot", name, "err", derr)
					}
				})
			}
			return catalogError(err)
		}
		op := barrierOp{Op: "snapshot", Snapshot: name, ID: snap.ID}
		err := s.mirror.Barrier(ctx, op.encode(), func() error {
			_, err := n.store.SnapshotAs(ctx, vol, name, snap.ID)
			return err
		})
		if err == nil {
			// Every copy in sync before must have taken it: one that failed
			// was dropped, and would miss the snapshot for good.
			for _, r := range s.mirror.Status() {
				if slices.Contains(v.InSync, r.Name) && r.State != replication.InSync {
					err = fmt.Errorf("%w: the copy on %s did not take it (%s); it is being resynced: retry", admin.ErrConflict, r.Name, r.Err)
				}
			}
		}
		if err == nil {
			err = n.propose(ctx, cluster.CommitSnapshot{Volume: vol, Name: name})
		}
		if err != nil {
			// Undone everywhere (merged on the copies that took it), not
			// left for the reconcilers.
			n.goRun(func() {
				dctx, cancel := context.WithTimeout(n.ctx, 5*time.Minute)
				defer cancel()
				if derr := n.DeleteSnapshot(dctx, vol, name); derr != nil {
					n.log.Warn("a failed snapshot was not dropped everywhere yet; the next primary term or the reconcilers will", "volume", vol, "snapshot", name, "err", derr)
				}
			})
			return fmt.Errorf("snapshot %q of volume %q: %w", name, vol, apiError(err))
		}
		out = admin.Snapshot{Name: name, Created: snap.Created, Size: snap.Size}
		return nil
	})
	return out, err
}

// DeleteSnapshot implements admin.Backend, on the leader: the catalog
// drops the snapshot, then every copy merges it away (the nodes are asked
// at once, in parallel; one that does not answer merges it when its
// reconciler finds it). It answers when the merges are done. Asked with
// LocalOnly, a node merges its own copy's snapshot.
func (n *Node) DeleteSnapshot(ctx context.Context, vol, snapshot string) error {
	if admin.LocalOnly(ctx) {
		return n.mergeLocal(vol, snapshot)
	}
	if c, err := n.leader(ctx); err != nil || c != nil {
		if err != nil {
			return err
		}
		return remote(c.DeleteSnapshot(ctx, vol, snapshot))
	}
	st := n.cluster.State()
	v, ok := st.Volumes[vol]
	if !ok {
		return fmt.Errorf("%w: volume %q", admin.ErrNotFound, vol)
	}
	if clones := st.ClonesOf(vol, snapshot); len(clones) > 0 {
		return fmt.Errorf("%w: snapshot %q of volume %q has clones %s: delete them first", admin.ErrConflict, snapshot, vol, strings.Join(clones, ", "))
	}
	if err := n.propose(ctx, cluster.DeleteSnapshot{Volume: vol, Name: snapshot}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(v.Placement))
	for i, node := range v.Placement {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if node == n.cfg.Name {
				errs[i] = n.mergeLocal(vol, snapshot)
				return
			}
			c, err := n.clientOf(node)
			if err == nil {
				c.LocalOnly = true
				err = c.DeleteSnapshot(ctx, vol, snapshot)
			}
			if err != nil {
				n.log.Warn("a copy did not merge the deleted snapshot now; its node will", "volume", vol, "snapshot", snapshot, "node", node, "err", err)
			}
		}()
	}
	wg.Wait()
	n.wake()
	return errors.Join(errs...)
}

// mergeLocal merges a snapshot the catalog dropped out of this node's copy
// (nothing to do if the copy or the snapshot is not here). The merge runs
// for the store: a caller that gives up does not stop it.
func (n *Node) mergeLocal(vol, snapshot string) error {
	if v, ok := n.cluster.State().Volumes[vol]; ok {
		if _, still := v.Snapshot(snapshot); still {
			// The leader committed the deletion; this node may not have
			// applied it yet.
			ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
			n.cluster.Sync(ctx)
			cancel()
			v = n.cluster.State().Volumes[vol]
		}
		if _, still := v.Snapshot(snapshot); still {
			return fmt.Errorf("%w: volume %q still has snapshot %q in the catalog", admin.ErrConflict, vol, snapshot)
		}
	}
	// A clone of it the catalog deleted may still be going from this
	// node's disk (in the background): wait for it, a minute at most.
	for deadline := time.Now().Add(time.Minute); ; {
		err := n.store.DeleteSnapshot(n.ctx, vol, snapshot)
		if errors.Is(err, volume.ErrNotFound) {
			return nil
		}
		if !errors.Is(err, volume.ErrInUse) || time.Now().After(deadline) {
			return apiError(err)
		}
		n.wake()
		select {
		case <-n.ctx.Done():
			return apiError(err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RevertVolume implements admin.Backend, on the primary: refused while
// initiators are logged in, unless req.Force, which closes their sessions
// first (their next login sees the unit attention of a new I_T nexus); a
// barrier reverts every copy at the same point.
func (n *Node) RevertVolume(ctx context.Context, vol string, req admin.RevertRequest) error {
	c, _, err := n.primaryOf(ctx, vol)
	if err != nil {
		return err
	}
	if c != nil {
		_, err := c.RevertVolume(ctx, vol, req)
		return remote(err)
	}
	err = n.onPrimary(ctx, vol, true, func(v cluster.Volume, s *served) error {
		if !slices.ContainsFunc(v.Snapshots, func(cs cluster.Snapshot) bool { return cs.Name == req.Snapshot }) {
			return fmt.Errorf("%w: volume %q has no snapshot %q", admin.ErrNotFound, vol, req.Snapshot)
		}
		iqn := n.iqn(vol)
		if sessions := n.iscsi.Sessions(iqn); len(sessions) > 0 {
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
		}
		// Pending in the catalog first: a primary that crashes between
		// its own revert and the replicas' redoes it on every copy before
		// it serves again.
		pending := "revert:" + req.Snapshot
		if err := n.propose(ctx, cluster.SetPending{Volume: vol, Epoch: v.Epoch, By: n.cfg.Name, Op: pending}); err != nil {
			return err
		}
		op := barrierOp{Op: "revert", Snapshot: req.Snapshot}
		err := s.mirror.Barrier(ctx, op.encode(), func() error {
			return n.store.Revert(ctx, vol, req.Snapshot, nil)
		})
		if err == nil {
			err = n.propose(context.WithoutCancel(ctx), cluster.SetPending{Volume: vol, Epoch: v.Epoch, By: n.cfg.Name, Op: ""})
		}
		if err != nil {
			// Nothing is served while a revert is pending: the reconciler
			// finishes it on every copy before it serves again.
			n.unserve(s)
			n.wake()
			return fmt.Errorf("revert of volume %q not finished (the volume is served again once it is): %w", vol, apiError(err))
		}
		return nil
	})
	if err != nil {
		return err
	}
	n.unitAttention(vol, scsi.ASCMediumChanged)
	return nil
}

// CloneVolume implements admin.Backend, on the leader: the clone is placed
// where its source's copies are (each copy is made from the local
// snapshot, in constant time) and is in sync from the start. Without a
// snapshot named, one ("for-NAME") is taken first.
func (n *Node) CloneVolume(ctx context.Context, source string, req admin.CloneRequest) (admin.Volume, error) {
	if c, err := n.leader(ctx); err != nil || c != nil {
		if err != nil {
			return admin.Volume{}, err
		}
		v, err := c.CloneVolume(ctx, source, req)
		return v, remote(err)
	}
	if err := volume.ValidateName(req.Name); err != nil {
		return admin.Volume{}, apiError(err)
	}
	st := n.cluster.State()
	src, ok := st.Volumes[source]
	if !ok {
		return admin.Volume{}, fmt.Errorf("%w: volume %q", admin.ErrNotFound, source)
	}
	if _, ok := st.Volumes[req.Name]; ok {
		return admin.Volume{}, fmt.Errorf("%w: volume %q already exists", admin.ErrConflict, req.Name)
	}
	snap := req.Snapshot
	if snap == "" {
		snap = "for-" + req.Name
		if _, err := n.CreateSnapshot(admin.WithoutForwarded(ctx), source, snap); err != nil {
			return admin.Volume{}, fmt.Errorf("snapshot %q of %q for the clone: %w", snap, source, err)
		}
		st = n.cluster.State()
		src = st.Volumes[source]
	}
	var size int64
	found := false
	for _, s := range src.Snapshots {
		if s.Name == snap {
			size, found = s.Size, true
		}
	}
	if !found {
		return admin.Volume{}, fmt.Errorf("%w: volume %q has no snapshot %q", admin.ErrNotFound, source, snap)
	}
	id := volume.NewIdentity()
	err := n.propose(ctx, cluster.CreateVolume{Name: req.Name, ID: id.ID, NAA: id.NAA, Serial: id.Serial, Size: size,
		Created: id.Created, Copies: src.Copies, Placement: src.Placement, Export: src.Export,
		Source: &cluster.CloneSource{Volume: source, Snapshot: snap, Taken: req.Snapshot == ""}, InSync: src.InSync})
	if err != nil {
		return admin.Volume{}, err
	}
	n.log.Info("volume cloned", "volume", req.Name, "source", source, "snapshot", snap)
	return n.waitInSync(ctx, req.Name)
}

// ResizeVolume implements admin.Backend, on the primary: a barrier grows
// every copy, then the catalog records the size.
func (n *Node) ResizeVolume(ctx context.Context, vol string, size admin.Size) (admin.Volume, error) {
	c, _, err := n.primaryOf(ctx, vol)
	if err != nil {
		return admin.Volume{}, err
	}
	if c != nil {
		v, err := c.ResizeVolume(ctx, vol, size)
		return v, remote(err)
	}
	bytes, err := sizeBytes(size)
	if err != nil {
		return admin.Volume{}, err
	}
	if err := volume.ValidateSize(bytes); err != nil {
		return admin.Volume{}, apiError(err)
	}
	err = n.onPrimary(ctx, vol, false, func(v cluster.Volume, s *served) error {
		if bytes < v.Size {
			return fmt.Errorf("%w: volume %q is %d bytes and cannot shrink; volumes only grow", admin.ErrInvalid, vol, v.Size)
		}
		// The catalog first: volumes only grow, and every node grows its
		// copy to the catalog's size (its reconciler, if it misses the
		// barrier), so no copy is ever larger than the catalog says.
		if err := n.propose(ctx, cluster.ResizeVolume{Name: vol, Size: bytes}); err != nil {
			return err
		}
		op := barrierOp{Op: "resize", Size: bytes}
		if err := s.mirror.Barrier(ctx, op.encode(), func() error { return op.apply(ctx, n.store, vol) }); err != nil {
			return apiError(err)
		}
		return nil
	})
	if err != nil {
		return admin.Volume{}, err
	}
	n.unitAttention(vol, scsi.ASCCapacityChanged)
	return n.GetVolume(ctx, vol)
}

// MoveVolume implements admin.Backend, on the current primary: it stops
// serving (initiators' sessions end once their commands are done; their
// next login is redirected), makes everything acknowledged durable on
// every copy, and commits the new primary with the next epoch. The new
// primary's mirror starts at that epoch; replicas then refuse this node's
// old epoch. If the commit fails, this node serves again.
func (n *Node) MoveVolume(ctx context.Context, vol string, req admin.MoveRequest) (admin.Volume, error) {
	c, _, err := n.primaryOf(ctx, vol)
	if err != nil {
		return admin.Volume{}, err
	}
	if c != nil {
		v, err := c.MoveVolume(ctx, vol, req)
		return v, remote(err)
	}
	err = n.onPrimary(ctx, vol, false, func(v cluster.Volume, s *served) error {
		if req.Primary == v.Primary {
			return nil
		}
		if !slices.Contains(v.InSync, req.Primary) {
			return fmt.Errorf("%w: volume %q: %s does not hold an in-sync copy (in sync: %s)", admin.ErrConflict, vol, req.Primary,
				strings.Join(v.InSync, ", "))
		}
		m := s.mirror
		n.lusMu.Lock()
		delete(n.lus, s.naa)
		delete(n.targets, s.name)
		n.lusMu.Unlock()
		if err := n.iscsi.RemoveTarget(n.iqn(vol)); err != nil && !errors.Is(err, iscsi.ErrNoSuchTarget) {
			return err
		}
		s.role = roleNone // the mirror stays open until the commit
		s.servedEpoch.Store(0)
		s.current.Store(nil) // the new primary may write into this copy from the commit on
		// moveErr says why the volume did not move; unknown, that
		// SetPrimary may have committed all the same.
		var moveErr error
		unknown := false
		if ferr := m.Flush(ctx); ferr != nil {
			moveErr = fmt.Errorf("flushing every copy before the move: %w", ferr)
		} else {
			// Not the request's context: a client giving up must not leave
			// the outcome unknown.
			pctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
			_, perr := n.cluster.Propose(pctx, cluster.SetPrimary{Volume: vol, Epoch: v.Epoch, Node: req.Primary})
			if perr != nil && !definiteRefusal(perr) {
				// Maybe committed: only the catalog can say. Until it
				// does, this node serves nothing.
				unknown = true
				if serr := n.cluster.Sync(pctx); serr == nil {
					unknown = false
					if cur := n.cluster.State().Volumes[vol]; cur.Epoch > v.Epoch {
						perr = nil
					}
				}
			}
			cancel()
			if perr == nil {
				m.Close()
				s.dropGate()
				s.mirror = nil
				n.metrics.forget(vol)
				n.log.Info("volume moved", "volume", vol, "from", n.cfg.Name, "to", req.Primary, "epoch", v.Epoch+1)
				// This node's port is a standby one from now on (or,
				// without a port number, redirects to the new primary).
				st := n.cluster.State()
				if nv, ok := st.Volumes[vol]; ok {
					var err error
					if n.port.Load() != 0 {
						err = n.serveStandby(s, st, nv)
					} else {
						err = n.serveRedirect(s, nv, st.Nodes[req.Primary].Portal)
					}
					if err != nil {
						n.log.Warn("the moved volume is not served here yet", "volume", vol, "err", err)
					}
				}
				return nil
			}
			// A stale epoch: another node may be the primary already.
			unknown = unknown || errors.Is(perr, cluster.ErrStaleEpoch)
			moveErr = catalogError(perr)
		}
		// Not moved: the reconciler serves it again. If another node may
		// have written this copy meanwhile as the primary (the outcome
		// stayed unknown, or this mirror was deposed), it is a new copy
		// now (rebuilt in full). A refused move, or one that failed before
		// it was proposed, keeps the copy: it holds every write, and may
		// be the only copy in sync.
		deposed := m.Deposed() || unknown
		m.Close()
		s.dropGate()
		s.mirror = nil
		s.current.Store(nil)
		if deposed {
			n.renewCopy(vol)
		}
		n.log.Warn("volume not moved; serving it again", "volume", vol, "err", moveErr)
		return moveErr
	})
	n.wake()
	if err != nil {
		return admin.Volume{}, err
	}
	return n.waitServedBy(ctx, vol, req.Primary)
}

// definiteRefusal says the catalog refused a command: it was not applied
// and never will be (unlike a timeout or ErrOutcomeUnknown).
func definiteRefusal(err error) bool {
	for _, e := range []error{cluster.ErrConflict, cluster.ErrStaleEpoch, cluster.ErrNotPrimary, cluster.ErrInvalid,
		cluster.ErrNotFound, cluster.ErrExists, cluster.ErrTooLarge, cluster.ErrUnsupported} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// waitServedBy waits (at most 30 s) until node serves the volume.
func (n *Node) waitServedBy(ctx context.Context, vol, node string) (admin.Volume, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := n.GetVolume(ctx, vol)
		if err != nil {
			return admin.Volume{}, err
		}
		if v.Primary == node && v.Served || time.Now().After(deadline) {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// VerifyVolume implements admin.Backend, on the primary.
func (n *Node) VerifyVolume(ctx context.Context, vol string) (admin.VerifyResult, error) {
	c, _, err := n.primaryOf(ctx, vol)
	if err != nil {
		return admin.VerifyResult{}, err
	}
	if c != nil {
		r, err := c.VerifyVolume(ctx, vol)
		return r, remote(err)
	}
	var out admin.VerifyResult
	var m replication.Spread
	var v cluster.Volume
	err = n.onPrimary(ctx, vol, false, func(cv cluster.Volume, s *served) error {
		m, v = s.mirror, cv
		return nil
	})
	if err != nil {
		return out, err
	}
	// The volume's slot is not held while the copies are read: the
	// mirror orders verify against writes itself, and a move or a
	// placement change meanwhile stops it with an error.
	err = func() error {
		diffs, err := m.Verify(ctx)
		if err != nil {
			return fmt.Errorf("verify of volume %q stopped: %w", vol, err)
		}
		out = admin.VerifyResult{Volume: vol, Copies: slices.Clone(v.InSync), Regions: (v.Size + verifyRegion - 1) / verifyRegion,
			RegionSize: verifyRegion, Differences: []admin.Difference{}}
		for _, d := range diffs {
			out.Differences = append(out.Differences, admin.Difference{Node: d.Replica, Offset: d.Offset, Length: d.Length})
		}
		return nil
	}()
	return out, err
}

// verifyRegion is the region size mirrors compare (the replication
// default).
const verifyRegion = 1 << 20

// AddCopy implements admin.Backend, on the leader: the node gets an empty
// copy, which the primary builds in full while writes go on.
func (n *Node) AddCopy(ctx context.Context, vol string, req admin.CopyRequest) (admin.Volume, error) {
	if c, err := n.leader(ctx); err != nil || c != nil {
		if err != nil {
			return admin.Volume{}, err
		}
		v, err := c.AddCopy(ctx, vol, req)
		return v, remote(err)
	}
	st := n.cluster.State()
	v, ok := st.Volumes[vol]
	if !ok {
		return admin.Volume{}, fmt.Errorf("%w: volume %q", admin.ErrNotFound, vol)
	}
	if len(v.Snapshots) > 0 {
		return admin.Volume{}, fmt.Errorf("%w: volume %q has snapshots, and a new copy is built from the live data only: delete the snapshots first (a rebuild with snapshots is not supported yet)",
			admin.ErrConflict, vol)
	}
	if err := n.propose(ctx, cluster.AddCopy{Volume: vol, Node: req.Node}); err != nil {
		return admin.Volume{}, err
	}
	n.wake()
	return n.GetVolume(ctx, vol)
}

// RemoveCopy implements admin.Backend, on the leader.
func (n *Node) RemoveCopy(ctx context.Context, vol, node string) (admin.Volume, error) {
	if c, err := n.leader(ctx); err != nil || c != nil {
		if err != nil {
			return admin.Volume{}, err
		}
		v, err := c.RemoveCopy(ctx, vol, node)
		return v, remote(err)
	}
	if v, ok := n.cluster.State().Volumes[vol]; ok {
		live := 0
		for _, c := range v.InSync {
			if m, ok := n.members.Member(c); c != node && ok && m.State == membership.StateAlive {
				live++
			}
		}
		if live == 0 {
			return admin.Volume{}, fmt.Errorf("%w: volume %q: removing the copy on %s would leave no in-sync copy on a node that is alive (in sync: %s)",
				admin.ErrConflict, vol, node, strings.Join(v.InSync, ", "))
		}
	}
	if err := n.propose(ctx, cluster.RemoveCopy{Volume: vol, Node: node}); err != nil {
		return admin.Volume{}, err
	}
	n.wake()
	return n.GetVolume(ctx, vol)
}

// ListNodes implements admin.Backend.
func (n *Node) ListNodes(ctx context.Context) ([]admin.Node, error) {
	st := n.cluster.State()
	servers, err := n.cluster.Servers()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnavailable, err)
	}
	leader, _ := n.cluster.Leader()
	members := map[string]membership.Member{}
	for _, m := range n.members.Members() {
		members[m.Name] = m
	}
	names := map[string]bool{}
	for name := range st.Nodes {
		names[name] = true
	}
	for name, m := range members {
		// A member the catalog does not know: one joining (alive), not
		// one removed (its gossip entry lingers as dead).
		if m.State == membership.StateAlive {
			names[name] = true
		}
	}
	var out []admin.Node
	for name := range names {
		rec, inCatalog := st.Nodes[name]
		m, gossiped := members[name]
		an := admin.Node{Name: name, Role: string(rec.Role), Gossip: rec.Gossip, Link: rec.Link, Portal: rec.Portal, API: rec.API,
			State: "unknown", Volumes: []string{}, Primaries: []string{}}
		if !inCatalog {
			an.Role, an.Gossip, an.Link, an.Portal, an.API = m.Meta.Role, m.Addr, m.Meta.Link, m.Meta.Portal, m.Meta.API
		}
		if gossiped {
			an.State = string(m.State)
			an.FreeBytes = m.Meta.FreeBytes
			an.UsedBytes = m.Meta.CapacityBytes - m.Meta.FreeBytes
		}
		for _, s := range servers {
			if s.ID == name {
				an.Raft = string(s.Suffrage)
			}
		}
		if name == leader {
			an.Raft = "leader"
		}
		for _, v := range st.Volumes {
			if slices.Contains(v.Placement, name) {
				an.Volumes = append(an.Volumes, v.Name)
			}
			if v.Primary == name {
				an.Primaries = append(an.Primaries, v.Name)
			}
		}
		sort.Strings(an.Volumes)
		sort.Strings(an.Primaries)
		out = append(out, an)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RemoveNode implements admin.Backend, on the leader.
func (n *Node) RemoveNode(ctx context.Context, name string) error {
	if c, err := n.leader(ctx); err != nil || c != nil {
		if err != nil {
			return err
		}
		return remote(c.RemoveNode(ctx, name))
	}
	if m, ok := n.members.Member(name); ok && m.State == membership.StateAlive {
		return fmt.Errorf("%w: node %q is alive; stop it first (node remove takes out a dead node)", admin.ErrConflict, name)
	}
	return catalogError(n.cluster.Remove(ctx, name))
}

// Metrics implements admin.Backend.
func (n *Node) Metrics() http.Handler { return n.metrics.handler() }
