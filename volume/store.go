// Package volume keeps one node's copies of volumes on its local disk: each
// volume's data in a sparse file (thin: space is used only where data was
// written, and UNMAP gives it back), its record in the bbolt catalog.
//
// Layout under the data directory:
//
//	catalog.db                  the catalog (volume/catalog)
//	volumes/<id>/head.layer     the volume's live data
//
// A volume is a directory so that snapshot layers can join the head later.
// Crash safety: Create makes and syncs the file before committing the
// record; Delete removes the record before the files. A crash in between
// leaves an orphan directory, which Open reports and never uses.
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
	"sort"
	"strings"
	"sync"
	"time"

	"tandem.io/tandem/volume/catalog"
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
}

// Store is the set of volumes on this node. Safe for concurrent use.
type Store struct {
	dir string
	log *slog.Logger
	cat *catalog.Catalog

	mu     sync.Mutex // protects vols, errs, closed
	vols   map[string]*entry
	closed bool
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
// volume. A volume whose data is missing or damaged is kept with an error;
// the others are served.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "volumes"), 0o700); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.Dir, err)
	}
	cat, err := catalog.Open(filepath.Join(cfg.Dir, "catalog.db"))
	if err != nil {
		return nil, err
	}
	s := &Store{dir: cfg.Dir, log: cfg.Logger, cat: cat, vols: make(map[string]*entry)}
	entries, err := cat.List()
	if err != nil {
		cat.Close()
		return nil, fmt.Errorf("reading catalog: %w", err)
	}
	known := map[string]bool{}
	for _, e := range entries {
		if e.Err != nil {
			s.log.Error("volume record is corrupt; not served", "volume", e.Name, "err", e.Err)
			s.vols[e.Name] = &entry{rec: catalog.Volume{Name: e.Name}, err: e.Err}
			continue
		}
		known[e.Volume.ID] = true
		dev, err := openVolumeFile(e.Name, s.headPath(e.Volume.ID), e.Volume.Size)
		if err != nil {
			s.log.Error("volume cannot be opened; not served", "volume", e.Name, "err", err)
		}
		s.vols[e.Name] = &entry{rec: e.Volume, dev: dev, err: err}
	}
	dirs, _ := os.ReadDir(filepath.Join(cfg.Dir, "volumes"))
	for _, d := range dirs {
		if !known[d.Name()] {
			s.log.Warn("data on disk that no volume record names; left alone, not served",
				"path", filepath.Join(cfg.Dir, "volumes", d.Name()))
		}
	}
	return s, nil
}

func (s *Store) headPath(id string) string { return filepath.Join(s.dir, "volumes", id, "head.layer") }

// Close flushes and closes every volume and the catalog. Idempotent.
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
	id := hex.EncodeToString(randomBytes(16))
	rec := catalog.Volume{Name: spec.Name, ID: id, Size: spec.Size, Created: time.Now().UTC().Truncate(time.Second), Export: spec.Export}
	// NAA 6: IEEE registered extended — 4-bit NAA, 24-bit OUI, 100 bits
	// of vendor-specific identifier.
	copy(rec.NAA[:], randomBytes(16))
	rec.NAA[0] = 0x60 | byte(naaOUI>>20)
	rec.NAA[1] = byte(naaOUI >> 12 & 0xff)
	rec.NAA[2] = byte(naaOUI >> 4 & 0xff)
	rec.NAA[3] = byte(naaOUI&0x0f)<<4 | rec.NAA[3]&0x0f
	rec.Serial = strings.ToUpper(id[:16])
	dir := filepath.Join(s.dir, "volumes", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Info{}, fmt.Errorf("volume %q: %w", spec.Name, err)
	}
	path := s.headPath(id)
	if err := createSparse(path, spec.Size); err != nil {
		os.RemoveAll(dir)
		return Info{}, fmt.Errorf("volume %q: creating %s: %w", spec.Name, path, err)
	}
	if err := s.cat.Create(rec); err != nil {
		os.RemoveAll(dir)
		return Info{}, err
	}
	dev, err := openVolumeFile(spec.Name, path, spec.Size)
	if err != nil {
		return Info{}, err
	}
	e := &entry{rec: rec, dev: dev}
	s.vols[spec.Name] = e
	s.log.Info("volume created", "volume", spec.Name, "size", spec.Size, "id", id)
	return e.info(), nil
}

// createSparse creates a file of the given size with no blocks allocated,
// and makes it and its directory entry durable.
func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (e *entry) info() Info {
	i := Info{Name: e.rec.Name, ID: e.rec.ID, Size: e.rec.Size, NAA: e.rec.NAA, Serial: e.rec.Serial,
		Created: e.rec.Created, Export: e.rec.Export}
	if e.err != nil {
		i.Error = e.err.Error()
	}
	if e.dev != nil {
		i.AllocatedBytes = e.dev.allocated()
	}
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
	return e.info(), nil
}

// List describes every volume, sorted by name.
func (s *Store) List() []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Info, 0, len(s.vols))
	for _, e := range s.vols {
		out = append(out, e.info())
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

// Delete removes a volume: its device is closed (later I/O gets
// block.ErrClosed), its record deleted, then its files.
func (s *Store) Delete(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.vols[name]
	if !ok {
		return fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	if e.dev != nil {
		e.dev.close()
	}
	if err := s.cat.Delete(name); err != nil {
		return err
	}
	delete(s.vols, name)
	if e.rec.ID != "" {
		if err := os.RemoveAll(filepath.Join(s.dir, "volumes", e.rec.ID)); err != nil {
			s.log.Warn("volume deleted but its files remain", "volume", name, "err", err)
		}
	}
	s.log.Info("volume deleted", "volume", name)
	return nil
}
