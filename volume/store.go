// Package volume keeps one node's copies of volumes on its local disk: each
// volume's data in a chain of layers (volume/layer: a writable head on
// read-only snapshots, each a sparse file), its record and the layer tree
// in the bbolt catalog. Files go through a vfs.FS, so tests can cut the
// power or fail the disk under the real store.
//
// Layout under the data directory:
//
//	catalog.db                  the catalog (volume/catalog)
//	layers/<id>.layer           heads and snapshots
//	volumes/<id>/head.layer     the head of a volume created before layers
//
// Snapshot, revert and clone only create an empty layer file and commit one
// catalog transaction: constant time whatever the volume's size. Deleting a
// snapshot first copies into its children the blocks they showed through
// from it (so they read the same), then commits, then removes the file.
//
// Crash safety. The catalog is the truth, and every operation is a fixed
// order of steps around exactly one catalog commit, so that a power cut
// between any two steps leaves a state Open knows what to do with:
//
//   - before the commit, files the operation created are synced, with
//     their directory, and already opened (a file that cannot be opened
//     fails the operation before anything is committed); blocks a merge
//     copied into a child are synced too. A cut here leaves the old state
//     plus an unnamed file (an orphan: reported, never used) or copied
//     blocks that read the same as before.
//   - the commit switches the state in one transaction.
//   - after the commit, the in-memory switch cannot fail, and files no
//     record names any longer are removed (and their directory synced). A
//     cut here leaves the new state plus an orphan.
//   - the one operation that changes a file's size (resize) grows and syncs
//     the head before the commit; Open rolls a head longer than its record
//     back to the recorded size (the larger size was never served).
//
// A commit that fails after it was written (catalog.ErrUncertain) may or
// may not have happened: the operation then undoes nothing, leaves every
// file in place (each outcome finds what it needs at the next start), and
// stops the volume's I/O where it could go into the wrong layer; the
// catalog refuses further commits until the node is restarted.
//
// Locking: one admin operation runs on a volume at a time (its op slot, a
// context-aware lock). The store lock guards the maps only: it is never held
// across file I/O, a device's drain or a catalog commit, so a slow flush or
// a long merge holds up only the operations on its own volume.
package volume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"tandem.io/tandem/volume/catalog"
	"tandem.io/tandem/volume/layer"
	"tandem.io/tandem/volume/vfs"
)

// Config configures a Store.
type Config struct {
	// Dir is the node's data directory.
	Dir    string
	Logger *slog.Logger
	// FS is the file system Dir is on; nil means the operating system's.
	// Tests pass a vfs.Mem (power cuts) or a vfs.Faulty (disk faults).
	FS vfs.FS
	// AllowCrashUnsafe serves volumes from a file system that reports
	// allocation right but may not keep data before allocation across a
	// power loss (vfs.ErrCrashUnsafe: ext4 without a journal or in
	// data=writeback, tmpfs, an unknown type), with a warning instead of a
	// refusal: for labs and tests, never for data that matters.
	AllowCrashUnsafe bool
	// CatalogPath is the catalog file, Dir/catalog.db if empty. The
	// catalog is always a file of the operating system (bbolt maps it);
	// its commits still go through FS (vfs.Committer).
	CatalogPath string
}

// Export is how a volume is offered to initiators.
type Export = catalog.Export

// Spec describes a volume to create.
type Spec struct {
	Name   string
	Size   int64
	Export Export
	// Identity is the volume's identity as the cluster catalog decided
	// it, the same for every copy; zero means a new one (NewIdentity).
	Identity Identity
}

// Identity is what makes a volume the same device to every initiator, on
// every node: its ID, NAA-6 designator and serial (INQUIRY answers them),
// and its creation time.
type Identity struct {
	ID      string
	NAA     [16]byte
	Serial  string
	Created time.Time
}

// NewIdentity makes a new volume identity: a random ID, an NAA-6
// designator and a serial. In a cluster only the catalog's leader calls it;
// every copy is then created with the identity the catalog holds.
func NewIdentity() Identity {
	id := hex.EncodeToString(randomBytes(16))
	var naa [16]byte
	// NAA 6: IEEE registered extended — 4-bit NAA, 24-bit OUI, 100 bits
	// of vendor-specific identifier.
	copy(naa[:], randomBytes(16))
	naa[0] = 0x60 | byte(naaOUI>>20)
	naa[1] = byte(naaOUI >> 12 & 0xff)
	naa[2] = byte(naaOUI >> 4 & 0xff)
	naa[3] = byte(naaOUI&0x0f)<<4 | naa[3]&0x0f
	return Identity{ID: id, NAA: naa, Serial: strings.ToUpper(id[:16]), Created: time.Now().UTC().Truncate(time.Second)}
}

// validIdentity checks an identity given by the caller.
func validIdentity(id Identity) error {
	if len(id.ID) != 32 {
		return fmt.Errorf("%w: volume ID %q is not 32 hex digits", ErrInvalidName, id.ID)
	}
	if _, err := hex.DecodeString(id.ID); err != nil {
		return fmt.Errorf("%w: volume ID %q is not 32 hex digits", ErrInvalidName, id.ID)
	}
	if id.NAA[0]>>4 != 6 || id.Serial == "" || len(id.Serial) > 32 {
		return fmt.Errorf("%w: volume %s: NAA %x / serial %q are not a valid identity", ErrInvalidName, id.ID, id.NAA, id.Serial)
	}
	return nil
}

// Info describes a volume.
type Info struct {
	Name           string
	ID             string
	Size           int64
	AllocatedBytes int64
	NAA            [16]byte
	Serial         string
	Created        time.Time
	Export         Export
	// Error says why the volume cannot be served (missing or damaged
	// data, a record that cannot be read, a failed sync); empty when it is
	// healthy.
	Error string
	// Snapshots, oldest first.
	Snapshots []SnapshotInfo
	// HeadLayer is the ID of the writable layer (its file is
	// layers/<HeadLayer>.layer).
	HeadLayer string
	// CopyID identifies this copy of the volume (catalog.Volume.CopyID).
	CopyID string
}

// SnapshotInfo describes one snapshot of a volume.
type SnapshotInfo struct {
	Name string
	// ID is the cluster's ID of the snapshot, given to SnapshotAs; empty
	// for one taken without.
	ID      string
	Created time.Time
	// Size is the volume's provisioned size when the snapshot was taken.
	Size int64
	// OwnBytes is the space the snapshot's layer alone holds: what
	// deleting it (after merging) can give back at most.
	OwnBytes int64
	// Clones are the volumes made from it.
	Clones []string
}

// Store is the set of volumes on this node. Safe for concurrent use.
type Store struct {
	dir string
	log *slog.Logger
	fs  vfs.FS
	cat *catalog.Catalog

	// ctx lives as long as the store: merges run in it (not in a caller's
	// request, which may give up), and Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	ops    sync.WaitGroup // operations under way; Close waits for them

	// mu protects vols, creating, layers, recs, bad, orphans and closed.
	// It is held only to read or change them, never across I/O. Lock
	// order: an entry's op slot, then mu, then a device's I/O lock.
	mu       sync.Mutex
	vols     map[string]*entry
	creating map[string]bool          // names of volumes being created or cloned
	layers   map[string]*layer.Layer  // open layers by ID
	recs     map[string]catalog.Layer // layer records by ID
	bad      map[string]error         // layer records that cannot be read, by ID
	// orphans are files no record named at Open (see Orphans).
	orphans []string
	closed  bool
}

type entry struct {
	rec catalog.Volume
	dev *Volume // nil when err is set
	err error
	// op is the volume's operation slot: one admin operation at a time.
	op chan struct{}
}

func newEntry(rec catalog.Volume) *entry { return &entry{rec: rec, op: make(chan struct{}, 1)} }

// naaOUI is the IEEE company ID in Tandem's NAA-6 designators: a locally
// administered (CID) value, as the project has no registered OUI.
const naaOUI = 0x0a7a4d

// Open opens the store in cfg.Dir, creating it if needed, and opens every
// volume with its layers. A volume whose record or data is missing or
// damaged is kept with an error; the others are served. A data directory
// on a file system that cannot keep layers safely is refused.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.FS == nil {
		cfg.FS = vfs.OS{}
	}
	if cfg.CatalogPath == "" {
		cfg.CatalogPath = filepath.Join(cfg.Dir, "catalog.db")
	}
	fs := cfg.FS
	for _, d := range []string{"volumes", "layers"} {
		if err := fs.MkdirAll(filepath.Join(cfg.Dir, d)); err != nil {
			return nil, fmt.Errorf("data dir %s: %w", cfg.Dir, err)
		}
	}
	if err := fs.SyncDir(cfg.Dir); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.Dir, err)
	}
	if err := fs.CheckAllocation(filepath.Join(cfg.Dir, "layers")); err != nil {
		if !errors.Is(err, vfs.ErrCrashUnsafe) || !cfg.AllowCrashUnsafe {
			return nil, fmt.Errorf("data dir %s: %w", cfg.Dir, err)
		}
		cfg.Logger.Warn("serving from a file system that may lose or garble data at a power loss, as asked (--allow-unsafe-filesystem)", "dir", cfg.Dir, "why", err)
	}
	cat, err := catalog.Open(cfg.CatalogPath, catalog.Options{
		BeforeCommit: func() error { return vfs.BeforeCommit(fs) },
		AfterCommit:  func() error { return vfs.AfterCommit(fs) },
	})
	if err != nil {
		return nil, err
	}
	s := &Store{dir: cfg.Dir, log: cfg.Logger, fs: fs, cat: cat, vols: make(map[string]*entry),
		creating: make(map[string]bool), layers: make(map[string]*layer.Layer)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	entries, err := cat.List()
	if err == nil {
		s.recs, s.bad, err = cat.Layers()
	}
	if err != nil {
		cat.Close()
		return nil, fmt.Errorf("reading catalog: %w", err)
	}
	for id, err := range s.bad {
		s.log.Error("layer record is corrupt; the volumes on it are not served", "layer", id, "err", err)
	}
	for _, e := range entries {
		if e.Err != nil {
			s.log.Error("volume record is corrupt; not served", "volume", e.Name, "err", e.Err)
			en := newEntry(catalog.Volume{Name: e.Name})
			en.err = e.Err
			s.vols[e.Name] = en
			continue
		}
		rec := e.Volume
		if rec.Head == "" {
			// A volume from before layers: its file becomes its head layer.
			l := catalog.Layer{ID: rec.ID, Path: filepath.Join("volumes", rec.ID, "head.layer"), Size: rec.Size,
				Volume: rec.ID, Created: rec.Created}
			rec.Head = l.ID
			if err := cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{l}}); err != nil {
				for _, l := range s.layers {
					l.Close()
				}
				cat.Close()
				return nil, fmt.Errorf("volume %q: recording its head layer: %w", rec.Name, err)
			}
			s.recs[l.ID] = l
		}
		en := newEntry(rec)
		if head, err := s.openHead(rec); err != nil {
			en.err = err
			s.log.Error("volume cannot be opened; not served", "volume", rec.Name, "err", err)
		} else {
			en.dev = newVolume(rec.Name, layer.NewChain(head, rec.Size))
		}
		s.vols[rec.Name] = en
	}
	s.reportOrphans()
	return s, nil
}

// openHead opens a volume's head (writable) and the layers under it. A head
// longer than its record is the trace of a resize cut short before its
// commit: it is cut back to the recorded size.
func (s *Store) openHead(rec catalog.Volume) (*layer.Layer, error) {
	hr, ok := s.recs[rec.Head]
	if !ok {
		return nil, s.missing(rec.Head)
	}
	var parent *layer.Layer
	if hr.Parent != "" {
		p, err := s.openLayer(hr.Parent)
		if err != nil {
			return nil, err
		}
		parent = p
	}
	path := filepath.Join(s.dir, hr.Path)
	l, err := layer.Open(s.fs, hr.ID, path, hr.Size, parent, true)
	if errors.Is(err, layer.ErrCorrupt) {
		if f, ferr := s.fs.Open(path, false); ferr == nil {
			n, serr := f.Size()
			f.Close()
			if serr == nil && n > hr.Size && n <= MaxSize {
				s.log.Warn("rolling back a resize that was not committed", "volume", rec.Name, "layer", hr.ID, "file_size", n, "size", hr.Size)
				if err := layer.Trim(s.fs, path, hr.Size); err != nil {
					return nil, err
				}
				l, err = layer.Open(s.fs, hr.ID, path, hr.Size, parent, true)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	s.layers[hr.ID] = l
	return l, nil
}

// missing explains why layer id has no usable record.
func (s *Store) missing(id string) error {
	if err := s.bad[id]; err != nil {
		return fmt.Errorf("%w: layer %s: %v", ErrCorrupt, id, err)
	}
	return fmt.Errorf("%w: layer %s is not in the catalog", ErrCorrupt, id)
}

// openLayer opens snapshot layer id (read-only) and, first, the layers
// under it; each once.
func (s *Store) openLayer(id string) (*layer.Layer, error) {
	if l := s.layers[id]; l != nil {
		return l, nil
	}
	rec, ok := s.recs[id]
	if !ok {
		return nil, s.missing(id)
	}
	var parent *layer.Layer
	if rec.Parent != "" {
		p, err := s.openLayer(rec.Parent)
		if err != nil {
			return nil, err
		}
		parent = p
	}
	l, err := layer.Open(s.fs, id, filepath.Join(s.dir, rec.Path), rec.Size, parent, false)
	if err != nil {
		return nil, err
	}
	s.layers[id] = l
	return l, nil
}

// reportOrphans warns about files no record names and remembers them.
func (s *Store) reportOrphans() {
	s.orphans = nil
	named := map[string]bool{}
	for _, r := range s.recs {
		named[filepath.Join(s.dir, r.Path)] = true
	}
	for id := range s.bad {
		// A record we cannot read may still name its file by the usual
		// path: never call that file an orphan.
		named[filepath.Join(s.dir, s.layerPath(id))] = true
	}
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := s.fs.ReadDir(dir)
		if err != nil {
			return
		}
		for _, de := range ents {
			path := filepath.Join(dir, de.Name)
			switch {
			case de.IsDir:
				walk(path)
			case !named[path]:
				s.log.Warn("data on disk that the catalog does not name; left alone, not used", "path", path)
				s.orphans = append(s.orphans, path)
			}
		}
	}
	walk(filepath.Join(s.dir, "layers"))
	walk(filepath.Join(s.dir, "volumes"))
}

// Orphans lists the files under the data directory that no catalog record
// named when the store was opened (left by a crash, or put there by hand):
// reported, never used.
func (s *Store) Orphans() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.orphans)
}

func (s *Store) layerPath(id string) string { return filepath.Join("layers", id+".layer") }

// Close stops the operations under way (a merge stops between blocks,
// having committed nothing), waits for them, then flushes and closes every
// volume and layer, and the catalog. Idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.ops.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, e := range s.vols {
		if e.dev != nil {
			if err := e.dev.close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, l := range s.layers {
		l.Close()
	}
	if err := s.cat.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

var errClosed = errors.New("volume store closed")

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return b
}

// lock takes volume name's op slot, waiting for the operation under way
// (until ctx is done or the store closes), and returns the volume's entry;
// release gives the slot back. The store lock is not held.
func (s *Store) lock(ctx context.Context, name string) (*entry, func(), error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, errClosed
	}
	e, ok := s.vols[name]
	if !ok {
		s.mu.Unlock()
		return nil, nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	s.ops.Add(1)
	s.mu.Unlock()
	select {
	case e.op <- struct{}{}:
	case <-ctx.Done():
		s.ops.Done()
		return nil, nil, fmt.Errorf("volume %q: waiting for the operation under way: %w", name, ctx.Err())
	case <-s.ctx.Done():
		s.ops.Done()
		return nil, nil, errClosed
	}
	release := func() { <-e.op; s.ops.Done() }
	s.mu.Lock()
	gone := s.vols[name] != e
	s.mu.Unlock()
	if gone {
		release()
		return nil, nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return e, release, nil
}

// reserve claims a new volume's name while it is created; release frees
// the claim (the volume is then in vols, or was never made).
func (s *Store) reserve(name string) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	if _, ok := s.vols[name]; ok || s.creating[name] {
		return nil, fmt.Errorf("volume %q: %w", name, ErrExists)
	}
	s.creating[name] = true
	s.ops.Add(1)
	return func() {
		s.mu.Lock()
		delete(s.creating, name)
		s.mu.Unlock()
		s.ops.Done()
	}, nil
}

// Create makes a new thin volume.
func (s *Store) Create(ctx context.Context, spec Spec) (Info, error) {
	if err := ValidateName(spec.Name); err != nil {
		return Info{}, err
	}
	if err := ValidateSize(spec.Size); err != nil {
		return Info{}, err
	}
	rec, err := s.newRecord(spec, spec.Size)
	if err != nil {
		return Info{}, err
	}
	release, err := s.reserve(spec.Name)
	if err != nil {
		return Info{}, err
	}
	defer release()
	if err := s.createVolume(rec, nil); err != nil {
		return Info{}, err
	}
	s.log.Info("volume created", "volume", spec.Name, "size", spec.Size, "id", rec.ID)
	return s.Get(spec.Name)
}

// newRecord is the record of a new volume with spec's identity (a new one
// if spec has none). An ID another volume of this store has is refused.
func (s *Store) newRecord(spec Spec, size int64) (catalog.Volume, error) {
	id := spec.Identity
	if id.ID == "" {
		id = NewIdentity()
	} else if err := validIdentity(id); err != nil {
		return catalog.Volume{}, err
	}
	if id.Created.IsZero() {
		id.Created = time.Now().UTC().Truncate(time.Second)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.vols {
		if e.rec.ID == id.ID {
			return catalog.Volume{}, fmt.Errorf("%w: volume %q already has ID %s", ErrExists, e.rec.Name, id.ID)
		}
	}
	return catalog.Volume{Name: spec.Name, ID: id.ID, Size: size, Created: id.Created, Export: spec.Export,
		NAA: id.NAA, Serial: id.Serial, CopyID: hex.EncodeToString(randomBytes(16))}, nil
}

// createVolume makes rec's head layer on parent (nil for none), commits
// both records and serves the volume. Steps: head file created and synced,
// opened; commit; served. The caller has reserved the name.
func (s *Store) createVolume(rec catalog.Volume, parent *layer.Layer) error {
	head, l, err := s.newHead(rec, parent)
	if err != nil {
		return fmt.Errorf("volume %q: %w", rec.Name, err)
	}
	rec.Head = head.ID
	if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{head}}); err != nil {
		s.undo(nil, err, fresh{head, l})
		return fmt.Errorf("volume %q: %w", rec.Name, err)
	}
	s.mu.Lock()
	s.recs[head.ID], s.layers[head.ID] = head, l
	s.vols[rec.Name] = servedEntry(rec, l)
	s.mu.Unlock()
	return nil
}

func servedEntry(rec catalog.Volume, head *layer.Layer) *entry {
	e := newEntry(rec)
	e.dev = newVolume(rec.Name, layer.NewChain(head, rec.Size))
	return e
}

// fresh is a head layer made for an operation, not committed yet.
type fresh struct {
	rec catalog.Layer
	l   *layer.Layer
}

// newHead creates, syncs and opens an empty head layer for volume rec on
// parent (nil for none). Nothing names it yet.
func (s *Store) newHead(rec catalog.Volume, parent *layer.Layer) (catalog.Layer, *layer.Layer, error) {
	r := catalog.Layer{ID: hex.EncodeToString(randomBytes(16)), Size: rec.Size, Volume: rec.ID, Created: time.Now().UTC()}
	if parent != nil {
		r.Parent = parent.ID
	}
	r.Path = s.layerPath(r.ID)
	path := filepath.Join(s.dir, r.Path)
	if err := layer.Create(s.fs, path, rec.Size); err != nil {
		return r, nil, err
	}
	l, err := layer.Open(s.fs, r.ID, path, rec.Size, parent, true)
	if err != nil {
		s.removeFile(r.Path)
		return r, nil, err
	}
	return r, l, nil
}

// undo cleans up after an operation whose commit did not succeed. Refused
// (nothing was written): the new heads are closed and their files
// removed. Outcome unknown (catalog.ErrUncertain): every file stays, as
// the next start may find the commit made; e's I/O, if e is given, stops
// until then.
func (s *Store) undo(e *entry, err error, heads ...fresh) {
	if errors.Is(err, catalog.ErrUncertain) {
		for _, h := range heads {
			h.l.Close()
		}
		if e != nil && e.dev != nil {
			e.dev.fail(err)
		}
		s.log.Error("a catalog commit failed with an unknown outcome; restart the node", "err", err)
		return
	}
	s.discard(heads...)
}

// discard closes and removes heads that no commit names.
func (s *Store) discard(heads ...fresh) {
	for _, h := range heads {
		h.l.Close()
		s.removeFile(h.rec.Path)
	}
}

// removeFile removes a file no record names (any more) and syncs its
// directory; a failure leaves an orphan, which is logged.
func (s *Store) removeFile(rel string) {
	path := filepath.Join(s.dir, rel)
	err := s.fs.Remove(path)
	if err == nil || vfs.IsNotExist(err) {
		err = s.fs.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		s.log.Warn("a file no record names could not be removed; it stays as an orphan", "path", path, "err", err)
	}
}

// info describes e; called with s.mu held.
func (s *Store) info(e *entry) Info {
	i := Info{Name: e.rec.Name, ID: e.rec.ID, Size: e.rec.Size, NAA: e.rec.NAA, Serial: e.rec.Serial,
		Created: e.rec.Created, Export: e.rec.Export, HeadLayer: e.rec.Head, CopyID: e.rec.CopyID}
	if i.CopyID == "" {
		i.CopyID = "L" + e.rec.ID
	}
	switch {
	case e.err != nil:
		i.Error = e.err.Error()
	case e.dev != nil:
		if err := e.dev.Err(); err != nil {
			i.Error = err.Error()
		}
	}
	for _, r := range s.recs {
		if r.Volume != e.rec.ID {
			continue
		}
		own := int64(0)
		if l := s.layers[r.ID]; l != nil {
			own = l.Allocated()
		}
		i.AllocatedBytes += own
		if r.Snapshot != "" {
			i.Snapshots = append(i.Snapshots, SnapshotInfo{Name: r.Snapshot, ID: r.SnapshotID, Created: r.Created, Size: r.Size, OwnBytes: own, Clones: s.clonesOf(r.ID)})
		}
	}
	sort.Slice(i.Snapshots, func(a, b int) bool { return i.Snapshots[a].Created.Before(i.Snapshots[b].Created) })
	return i
}

// Get describes one volume.
func (s *Store) Get(name string) (Info, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.vols[name]
	if !ok {
		return Info{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return s.info(e), nil
}

// List describes every volume, sorted by name.
func (s *Store) List() []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Info, 0, len(s.vols))
	for _, e := range s.vols {
		out = append(out, s.info(e))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Device returns a volume's open device.
func (s *Store) Device(name string) (*Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.vols[name]
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if e.err != nil {
		return nil, fmt.Errorf("volume %q: %w: %v", name, ErrUnavailable, e.err)
	}
	return e.dev, nil
}

// Reservations keeps one volume's SCSI persistent reservation state in the
// catalog (it implements scsi.ReservationStore).
type Reservations struct {
	cat *catalog.Catalog
	id  string
}

// LoadReservations returns the stored state, nil if none.
func (r *Reservations) LoadReservations() ([]byte, error) { return r.cat.Reservations(r.id) }

// SaveReservations stores the state durably.
func (r *Reservations) SaveReservations(b []byte) error { return r.cat.SetReservations(r.id, b) }

// Reservations returns the keeper of volume name's reservation state.
func (s *Store) Reservations(name string) (*Reservations, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.vols[name]
	if !ok {
		return nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return &Reservations{cat: s.cat, id: e.rec.ID}, nil
}

// errUnreadable refuses an operation that drops a snapshot while layer
// records cannot be read: a volume built on the snapshot may be among
// them. Called with s.mu held.
func (s *Store) errUnreadable(what string) error {
	if len(s.bad) == 0 {
		return nil
	}
	var ids []string
	for id := range s.bad {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return fmt.Errorf("%s: %w: the catalog has %d layer records that cannot be read (%s); a clone's layer may be among them, so no snapshot is removed until they are repaired or their volumes deleted",
		what, ErrInUse, len(ids), strings.Join(ids, ", "))
}

// ownLayers lists the layer records of e's volume, or why it cannot be
// deleted (a snapshot with clones, or unreadable records that might be
// clones). Called with s.mu held.
func (s *Store) ownLayers(e *entry) ([]catalog.Layer, error) {
	var own []catalog.Layer
	snapshots := false
	for _, r := range s.recs {
		if e.rec.ID != "" && r.Volume == e.rec.ID {
			own = append(own, r)
			snapshots = snapshots || r.Snapshot != ""
			if cl := s.clonesOf(r.ID); len(cl) > 0 {
				return nil, fmt.Errorf("volume %q: %w: snapshot %q has clones %s; delete them first", e.rec.Name, ErrInUse, r.Snapshot, strings.Join(cl, ", "))
			}
		}
	}
	if snapshots {
		if err := s.errUnreadable(fmt.Sprintf("volume %q", e.rec.Name)); err != nil {
			return nil, err
		}
	}
	return own, nil
}

// Delete removes a volume with its snapshots. Steps: before (if given;
// the node stops serving the volume there) with the volume's op slot held;
// its device stops (in-flight I/O finishes, later I/O gets
// block.ErrClosed); one commit deletes its records and reservations (if it
// is refused, the device serves again and nothing changed); then its files
// go. A volume whose snapshots have clones is refused until the clones are
// deleted.
func (s *Store) Delete(ctx context.Context, name string, before func() error) error {
	e, release, err := s.lock(ctx, name)
	if err != nil {
		return err
	}
	defer release()
	s.mu.Lock()
	own, err := s.ownLayers(e)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if before != nil {
		if err := before(); err != nil {
			return err
		}
	}
	if e.dev != nil {
		if err := e.dev.close(); err != nil {
			s.log.Warn("flushing a volume being deleted failed", "volume", name, "err", err)
		}
	}
	ch := catalog.Changes{DeleteVolumes: []string{name}}
	if e.rec.ID != "" {
		ch.DropVolumeState = []string{e.rec.ID}
	}
	for _, r := range own {
		ch.DeleteLayers = append(ch.DeleteLayers, r.ID)
	}
	if err := s.cat.Apply(ch); err != nil {
		if e.dev != nil && !errors.Is(err, catalog.ErrUncertain) {
			e.dev.reopen()
		}
		s.undo(nil, err)
		return fmt.Errorf("volume %q: delete: %w", name, err)
	}
	s.mu.Lock()
	delete(s.vols, name)
	var gone []*layer.Layer
	for _, r := range own {
		gone = append(gone, s.forget(r))
	}
	s.mu.Unlock()
	s.drop(own, gone)
	if e.rec.ID != "" {
		dir := filepath.Join(s.dir, "volumes", e.rec.ID)
		if err := s.fs.RemoveAll(dir); err != nil {
			s.log.Warn("a deleted volume's directory could not be removed", "path", dir, "err", err)
		}
	}
	s.log.Info("volume deleted", "volume", name)
	return nil
}

// forget drops a layer whose record is gone from the maps and returns its
// open layer (nil if none). Called with s.mu held.
func (s *Store) forget(r catalog.Layer) *layer.Layer {
	l := s.layers[r.ID]
	delete(s.layers, r.ID)
	delete(s.recs, r.ID)
	return l
}

// drop closes layers no record names any more and removes their files.
func (s *Store) drop(recs []catalog.Layer, open []*layer.Layer) {
	for _, l := range open {
		if l != nil {
			l.Close()
		}
	}
	for _, r := range recs {
		s.removeFile(r.Path)
	}
}

// clonesOf lists the volumes (other than the layer's own) whose layers sit
// directly on layer id. Called with s.mu held.
func (s *Store) clonesOf(id string) []string {
	owner := s.recs[id].Volume
	var out []string
	for _, r := range s.recs {
		if r.Parent == id && r.Volume != owner {
			out = append(out, s.volumeName(r.Volume))
		}
	}
	sort.Strings(out)
	return out
}

func (s *Store) volumeName(id string) string {
	for n, e := range s.vols {
		if e.rec.ID == id {
			return n
		}
	}
	return id
}
