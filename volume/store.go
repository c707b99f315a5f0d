// Package volume keeps one node's copies of volumes on its local disk: each
// volume's data in a chain of layers (volume/layer: a writable head on
// read-only snapshots, each a sparse file), its record and the layer tree
// in the bbolt catalog.
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
// Crash safety: every new file is created and synced before the catalog
// transaction that names it; files are removed only after the transaction
// that stops naming them. A crash in between leaves an orphan file, which
// Open reports and never uses.
package volume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"tandem.io/tandem/volume/catalog"
	"tandem.io/tandem/volume/layer"
)

// Config configures a Store.
type Config struct {
	// Dir is the node's data directory.
	Dir    string
	Logger *slog.Logger
}

// Export is how a volume is offered to initiators.
type Export = catalog.Export

// Spec describes a volume to create.
type Spec struct {
	Name   string
	Size   int64
	Export Export
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
	// data); empty when it is healthy.
	Error string
	// Snapshots, oldest first.
	Snapshots []SnapshotInfo
	// HeadLayer is the ID of the writable layer (its file is
	// layers/<HeadLayer>.layer).
	HeadLayer string
}

// SnapshotInfo describes one snapshot of a volume.
type SnapshotInfo struct {
	Name    string
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
	cat *catalog.Catalog

	mu     sync.Mutex // protects vols, layers, recs, closed; held across snapshot operations
	vols   map[string]*entry
	layers map[string]*layer.Layer  // open layers by ID
	recs   map[string]catalog.Layer // layer records by ID
	// orphans are files no record named at Open (see Orphans).
	orphans []string
	closed  bool
}

type entry struct {
	rec catalog.Volume
	dev *Volume // nil when err is set
	err error
}

// naaOUI is the IEEE company ID in Tandem's NAA-6 designators: a locally
// administered (CID) value, as the project has no registered OUI.
const naaOUI = 0x0a7a4d

// Open opens the store in cfg.Dir, creating it if needed, and opens every
// volume with its layers. A volume whose data is missing or damaged is kept
// with an error; the others are served.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, d := range []string{"volumes", "layers"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("data dir %s: %w", cfg.Dir, err)
		}
	}
	cat, err := catalog.Open(filepath.Join(cfg.Dir, "catalog.db"))
	if err != nil {
		return nil, err
	}
	s := &Store{dir: cfg.Dir, log: cfg.Logger, cat: cat, vols: make(map[string]*entry),
		layers: make(map[string]*layer.Layer)}
	entries, err := cat.List()
	if err == nil {
		s.recs, err = cat.Layers()
	}
	if err != nil {
		cat.Close()
		return nil, fmt.Errorf("reading catalog: %w", err)
	}
	for _, e := range entries {
		if e.Err != nil {
			s.log.Error("volume record is corrupt; not served", "volume", e.Name, "err", e.Err)
			s.vols[e.Name] = &entry{rec: catalog.Volume{Name: e.Name}, err: e.Err}
			continue
		}
		rec := e.Volume
		if rec.Head == "" {
			// A volume from before layers: its file becomes its head layer.
			l := catalog.Layer{ID: rec.ID, Path: filepath.Join("volumes", rec.ID, "head.layer"), Size: rec.Size,
				Volume: rec.ID, Created: rec.Created}
			rec.Head = l.ID
			if err := cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{l}}); err != nil {
				cat.Close()
				return nil, fmt.Errorf("volume %q: recording its head layer: %w", rec.Name, err)
			}
			s.recs[l.ID] = l
		}
		en := &entry{rec: rec}
		if head, err := s.openLayer(rec.Head); err != nil {
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

// openLayer opens layer id and, first, the layers under it; each once.
func (s *Store) openLayer(id string) (*layer.Layer, error) {
	if l := s.layers[id]; l != nil {
		return l, nil
	}
	rec, ok := s.recs[id]
	if !ok {
		return nil, fmt.Errorf("%w: layer %s is not in the catalog", ErrCorrupt, id)
	}
	var parent *layer.Layer
	if rec.Parent != "" {
		p, err := s.openLayer(rec.Parent)
		if err != nil {
			return nil, err
		}
		parent = p
	}
	l, err := layer.Open(id, filepath.Join(s.dir, rec.Path), rec.Size, parent, true)
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
	for _, d := range []string{"layers", "volumes"} {
		filepath.WalkDir(filepath.Join(s.dir, d), func(path string, de os.DirEntry, err error) error {
			if err == nil && !de.IsDir() && !named[path] {
				s.log.Warn("data on disk that the catalog does not name; left alone, not used", "path", path)
				s.orphans = append(s.orphans, path)
			}
			return nil
		})
	}
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

// Close flushes and closes every volume and layer, and the catalog.
// Idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
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

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return b
}

// Create makes a new thin volume.
func (s *Store) Create(ctx context.Context, spec Spec) (Info, error) {
	if err := ValidateName(spec.Name); err != nil {
		return Info{}, err
	}
	if err := ValidateSize(spec.Size); err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Info{}, fmt.Errorf("volume store closed")
	}
	if _, ok := s.vols[spec.Name]; ok {
		return Info{}, fmt.Errorf("volume %q: %w", spec.Name, ErrExists)
	}
	rec := newRecord(spec.Name, spec.Size, spec.Export)
	if err := s.createVolume(rec, ""); err != nil {
		return Info{}, err
	}
	s.log.Info("volume created", "volume", spec.Name, "size", spec.Size, "id", rec.ID)
	return s.info(s.vols[spec.Name]), nil
}

// newRecord gives a new volume its identity: ID, NAA-6 designator and
// serial, generated once and never changed.
func newRecord(name string, size int64, export Export) catalog.Volume {
	id := hex.EncodeToString(randomBytes(16))
	rec := catalog.Volume{Name: name, ID: id, Size: size, Created: time.Now().UTC().Truncate(time.Second), Export: export}
	// NAA 6: IEEE registered extended — 4-bit NAA, 24-bit OUI, 100 bits
	// of vendor-specific identifier.
	copy(rec.NAA[:], randomBytes(16))
	rec.NAA[0] = 0x60 | byte(naaOUI>>20)
	rec.NAA[1] = byte(naaOUI >> 12 & 0xff)
	rec.NAA[2] = byte(naaOUI >> 4 & 0xff)
	rec.NAA[3] = byte(naaOUI&0x0f)<<4 | rec.NAA[3]&0x0f
	rec.Serial = strings.ToUpper(id[:16])
	return rec
}

// createVolume makes rec's head layer on parent ("" for none), commits
// both records and serves the volume. Called with s.mu held.
func (s *Store) createVolume(rec catalog.Volume, parent string) error {
	head := catalog.Layer{ID: hex.EncodeToString(randomBytes(16)), Parent: parent, Size: rec.Size, Volume: rec.ID,
		Created: time.Now().UTC()}
	head.Path = s.layerPath(head.ID)
	path := filepath.Join(s.dir, head.Path)
	if err := layer.Create(path, rec.Size); err != nil {
		return fmt.Errorf("volume %q: %w", rec.Name, err)
	}
	rec.Head = head.ID
	if err := s.cat.Apply(catalog.Changes{PutVolumes: []catalog.Volume{rec}, PutLayers: []catalog.Layer{head}}); err != nil {
		os.Remove(path)
		return fmt.Errorf("volume %q: %w", rec.Name, err)
	}
	s.recs[head.ID] = head
	l, err := s.openLayer(head.ID)
	if err != nil {
		s.vols[rec.Name] = &entry{rec: rec, err: err}
		return err
	}
	s.vols[rec.Name] = &entry{rec: rec, dev: newVolume(rec.Name, layer.NewChain(l, rec.Size))}
	return nil
}

// info describes e; called with s.mu held.
func (s *Store) info(e *entry) Info {
	i := Info{Name: e.rec.Name, ID: e.rec.ID, Size: e.rec.Size, NAA: e.rec.NAA, Serial: e.rec.Serial,
		Created: e.rec.Created, Export: e.rec.Export, HeadLayer: e.rec.Head}
	if e.err != nil {
		i.Error = e.err.Error()
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
			i.Snapshots = append(i.Snapshots, SnapshotInfo{Name: r.Snapshot, Created: r.Created, Size: r.Size, OwnBytes: own, Clones: s.clonesOf(r.ID)})
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

// CheckDelete reports whether Delete would be refused, without deleting.
func (s *Store) CheckDelete(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.vols[name]
	if !ok {
		return fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	for _, r := range s.recs {
		if e.rec.ID != "" && r.Volume == e.rec.ID {
			if cl := s.clonesOf(r.ID); len(cl) > 0 {
				return fmt.Errorf("volume %q: %w: snapshot %q has clones %s; delete them first", name, ErrInUse, r.Snapshot, strings.Join(cl, ", "))
			}
		}
	}
	return nil
}

// Delete removes a volume with its snapshots: its device is closed (later
// I/O gets block.ErrClosed), its records deleted, then its files. A volume
// whose snapshots have clones is refused until the clones are deleted.
func (s *Store) Delete(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.vols[name]
	if !ok {
		return fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	var own []catalog.Layer
	for _, r := range s.recs {
		if e.rec.ID != "" && r.Volume == e.rec.ID {
			own = append(own, r)
			if cl := s.clonesOf(r.ID); len(cl) > 0 {
				return fmt.Errorf("volume %q: %w: snapshot %q has clones %s; delete them first", name, ErrInUse, r.Snapshot, strings.Join(cl, ", "))
			}
		}
	}
	if e.dev != nil {
		e.dev.close()
	}
	ch := catalog.Changes{DeleteVolumes: []string{name}}
	for _, r := range own {
		ch.DeleteLayers = append(ch.DeleteLayers, r.ID)
	}
	if err := s.cat.Apply(ch); err != nil {
		return err
	}
	s.cat.SetReservations(e.rec.ID, nil)
	delete(s.vols, name)
	for _, r := range own {
		s.dropLayer(r)
	}
	if e.rec.ID != "" {
		os.RemoveAll(filepath.Join(s.dir, "volumes", e.rec.ID))
	}
	s.log.Info("volume deleted", "volume", name)
	return nil
}

// dropLayer forgets a layer whose record is gone and removes its file.
func (s *Store) dropLayer(r catalog.Layer) {
	if l := s.layers[r.ID]; l != nil {
		l.Close()
	}
	delete(s.layers, r.ID)
	delete(s.recs, r.ID)
	if err := os.Remove(filepath.Join(s.dir, r.Path)); err != nil && !os.IsNotExist(err) {
		s.log.Warn("layer dropped but its file remains", "layer", r.ID, "path", r.Path, "err", err)
	}
}

// clonesOf lists the volumes (other than the layer's own) whose layers sit
// directly on layer id.
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
