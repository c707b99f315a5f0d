// Package catalog keeps the node's volume records in a bbolt file: names,
// sizes, identities and export settings. Data never goes through it. Every
// change is one bbolt transaction, so a crash leaves the catalog either
// before or after it, never in between. It is the only importer of bbolt.
package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Errors, wrapped with the name involved.
var (
	// ErrUncertain: a commit failed after it was written (the last
	// fdatasync of bbolt's meta page): it may or may not be on disk. The
	// catalog refuses every later commit until it is reopened, when it
	// shows whichever state the disk kept.
	ErrUncertain = errors.New("catalog commit failed with an unknown outcome; restart the node")
	ErrNotFound  = errors.New("not found")
	ErrExists    = errors.New("already exists")
	ErrCorrupt   = errors.New("corrupt catalog record")
	ErrInUse     = errors.New("data dir is in use by another tandem process")
)

const (
	formatVersion = 1
	recordVersion = 1
)

var (
	bucketMeta    = []byte("meta")
	bucketVolumes = []byte("volumes")
	// bucketReservations holds each volume's persistent reservation state
	// (SCSI, opaque here), keyed by volume ID.
	bucketReservations = []byte("reservations")
	// bucketLayers holds the layer tree: every head and snapshot layer,
	// keyed by layer ID.
	bucketLayers = []byte("layers")
	// bucketEpochs holds, per volume ID, the highest epoch this node has
	// accepted from a primary (8 bytes, big endian).
	bucketEpochs = []byte("epochs")
	// bucketDirty holds dirty-region maps: per volume ID and replica node
	// (key "<id>/<node>"), a bitmap of the regions that replica misses.
	bucketDirty = []byte("dirty")
	keyFormat   = []byte("format")
)

// Volume is one volume's record.
type Volume struct {
	Version int       `json:"version"`
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Size    int64     `json:"size"`
	NAA     [16]byte  `json:"naa"`
	Serial  string    `json:"serial"`
	Created time.Time `json:"created"`
	Export  Export    `json:"export"`
	// CopyID identifies this node's copy of the volume: made when the
	// copy is created, so a copy made again (a replaced disk) is never
	// taken for the one the cluster knew. Empty in records written before
	// copies had IDs (the store then reports "L"+ID).
	CopyID string `json:"copy_id,omitempty"`
	// Head is the volume's writable layer. Empty in records written
	// before layers existed: the head is then the file
	// volumes/<ID>/head.layer (the store adds the layer record).
	Head string `json:"head,omitempty"`
}

// Layer is one layer file: a volume's head, or a snapshot.
type Layer struct {
	ID string `json:"id"`
	// Parent is the layer below (empty for a base layer).
	Parent string `json:"parent,omitempty"`
	// Path is the file, relative to the data directory.
	Path string `json:"path"`
	Size int64  `json:"size"`
	// Volume is the ID of the volume the layer belongs to.
	Volume string `json:"volume"`
	// Snapshot is the snapshot's name; empty for a head. SnapshotID is the
	// cluster's ID of the snapshot (empty for one taken before).
	Snapshot   string    `json:"snapshot,omitempty"`
	SnapshotID string    `json:"snapshot_id,omitempty"`
	Created    time.Time `json:"created"`
}

// Changes is a set of record changes applied in one transaction.
type Changes struct {
	PutVolumes    []Volume
	DeleteVolumes []string // names
	PutLayers     []Layer
	DeleteLayers  []string // IDs
	// DropVolumeState drops what the catalog keeps for volumes (IDs)
	// besides their records: reservation state, accepted epoch and dirty
	// maps.
	DropVolumeState []string
}

// Apply makes all the changes or none; they are on disk when it returns
// nil. Any other error means nothing changed, but one wrapping ErrUncertain:
// the change may or may not have been made.
func (c *Catalog) Apply(ch Changes) error {
	return c.update(func(tx *bolt.Tx) error {
		vb, lb, rb := tx.Bucket(bucketVolumes), tx.Bucket(bucketLayers), tx.Bucket(bucketReservations)
		for _, name := range ch.DeleteVolumes {
			if err := vb.Delete([]byte(name)); err != nil {
				return err
			}
		}
		for _, id := range ch.DropVolumeState {
			if err := rb.Delete([]byte(id)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketEpochs).Delete([]byte(id)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketEpochs).Delete(dirtyEpochKey(id)); err != nil {
				return err
			}
			if err := deleteDirty(tx.Bucket(bucketDirty), id); err != nil {
				return err
			}
		}
		for _, v := range ch.PutVolumes {
			v.Version = recordVersion
			b, err := json.Marshal(v)
			if err != nil {
				return err
			}
			if err := vb.Put([]byte(v.Name), b); err != nil {
				return err
			}
		}
		for _, id := range ch.DeleteLayers {
			if err := lb.Delete([]byte(id)); err != nil {
				return err
			}
		}
		for _, l := range ch.PutLayers {
			b, err := json.Marshal(l)
			if err != nil {
				return err
			}
			if err := lb.Put([]byte(l.ID), b); err != nil {
				return err
			}
		}
		return nil
	})
}

// update runs fn in a read-write transaction and commits it. An error
// before the commit (fn's, or the commit refused) changes nothing; an
// error from the commit itself, or from AfterCommit, leaves its outcome
// unknown (ErrUncertain) and refuses every later commit.
func (c *Catalog) update(fn func(*bolt.Tx) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.uncertain != nil {
		return fmt.Errorf("catalog: commit refused after an earlier one: %w", c.uncertain)
	}
	if err := c.before(); err != nil {
		return fmt.Errorf("catalog: commit refused: %w", err)
	}
	tx, err := c.db.Begin(true)
	if err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return fmt.Errorf("catalog: %w", err)
	}
	err = tx.Commit()
	if err == nil {
		err = c.after()
	}
	if err != nil {
		c.uncertain = fmt.Errorf("%w (%v)", ErrUncertain, err)
		return fmt.Errorf("catalog: commit: %w", c.uncertain)
	}
	return nil
}

// Layers returns every layer record, and separately why each record that
// cannot be read is corrupt (by its key): one bad record costs only the
// volumes that use it.
func (c *Catalog) Layers() (map[string]Layer, map[string]error, error) {
	out := map[string]Layer{}
	bad := map[string]error{}
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLayers).ForEach(func(k, b []byte) error {
			l, err := DecodeLayer(b)
			if err == nil && l.ID != string(k) {
				err = fmt.Errorf("%w: record %q names layer %q", ErrCorrupt, k, l.ID)
			}
			if err != nil {
				bad[string(k)] = err
				return nil
			}
			out[l.ID] = l
			return nil
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("catalog: reading layers: %w", err)
	}
	return out, bad, nil
}

// DecodeLayer parses and validates a stored layer record.
func DecodeLayer(b []byte) (Layer, error) {
	var l Layer
	if err := json.Unmarshal(b, &l); err != nil {
		return Layer{}, fmt.Errorf("%w: layer record: %v", ErrCorrupt, err)
	}
	switch {
	case l.ID == "" || l.Volume == "":
		return Layer{}, fmt.Errorf("%w: layer record without id or volume", ErrCorrupt)
	case l.Path == "" || filepath.IsAbs(l.Path) || strings.Contains(l.Path, ".."):
		return Layer{}, fmt.Errorf("%w: layer %q has path %q", ErrCorrupt, l.ID, l.Path)
	case l.Size <= 0 || l.Size%4096 != 0:
		return Layer{}, fmt.Errorf("%w: layer %q has size %d", ErrCorrupt, l.ID, l.Size)
	}
	return l, nil
}

// Export is how a volume is offered to initiators.
type Export struct {
	CHAPUser     string   `json:"chap_user,omitempty"`
	CHAPSecret   string   `json:"chap_secret,omitempty"`
	MutualUser   string   `json:"mutual_user,omitempty"`
	MutualSecret string   `json:"mutual_secret,omitempty"`
	Allow        []string `json:"allow,omitempty"`
}

// Catalog is an open catalog file. Safe for concurrent use.
type Catalog struct {
	db            *bolt.DB
	before, after func() error

	mu        sync.Mutex // serializes commits; protects uncertain
	uncertain error      // set once a commit's outcome is unknown
}

// Options configures a catalog.
type Options struct {
	// BeforeCommit, if set, runs before every commit; an error refuses the
	// commit. The store passes its file system's (vfs.Committer), so that
	// tests can cut the power or fail a disk between any two steps,
	// catalog commits included.
	BeforeCommit func() error
	// AfterCommit, if set, runs after every commit was written; an error
	// makes its outcome unknown (ErrUncertain).
	AfterCommit func() error
}

// Open opens (creating if needed) the catalog at path. A second process on
// the same file fails fast with ErrInUse.
func Open(path string, opts Options) (*Catalog, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("catalog %s: %w", path, ErrInUse)
		}
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketVolumes); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketReservations); err != nil {
			return err
		}
		for _, b := range [][]byte{bucketLayers, bucketEpochs, bucketDirty} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if v := meta.Get(keyFormat); v == nil {
			return meta.Put(keyFormat, []byte(fmt.Sprint(formatVersion)))
		} else if string(v) != fmt.Sprint(formatVersion) {
			return fmt.Errorf("catalog format %q, this tandem reads format %d", v, formatVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	none := func() error { return nil }
	if opts.BeforeCommit == nil {
		opts.BeforeCommit = none
	}
	if opts.AfterCommit == nil {
		opts.AfterCommit = none
	}
	return &Catalog{db: db, before: opts.BeforeCommit, after: opts.AfterCommit}, nil
}

// Close closes the file.
func (c *Catalog) Close() error { return c.db.Close() }

// DecodeVolume parses and validates a stored record.
func DecodeVolume(b []byte) (Volume, error) {
	var v Volume
	if err := json.Unmarshal(b, &v); err != nil {
		return Volume{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	switch {
	case v.Version != recordVersion:
		return Volume{}, fmt.Errorf("%w: record version %d", ErrCorrupt, v.Version)
	case v.Name == "" || v.ID == "":
		return Volume{}, fmt.Errorf("%w: record without name or id", ErrCorrupt)
	case v.Size <= 0:
		return Volume{}, fmt.Errorf("%w: volume %q has size %d", ErrCorrupt, v.Name, v.Size)
	}
	return v, nil
}

// Reservations returns the reservation state stored for volume id (nil if
// none).
func (c *Catalog) Reservations(id string) ([]byte, error) {
	var out []byte
	err := c.db.View(func(tx *bolt.Tx) error {
		out = append([]byte(nil), tx.Bucket(bucketReservations).Get([]byte(id))...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: reservations of volume %s: %w", id, err)
	}
	return out, nil
}

// SetReservations stores the reservation state of volume id; it is on disk
// when SetReservations returns.
func (c *Catalog) SetReservations(id string, state []byte) error {
	err := c.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketReservations).Put([]byte(id), state)
	})
	if err != nil {
		return fmt.Errorf("catalog: saving reservations of volume %s: %w", id, err)
	}
	return nil
}

// Entry is a record as read: the volume, or why it could not be read.
type Entry struct {
	Name   string
	Volume Volume
	Err    error
}

// List returns every record, sorted by name. Corrupt records are returned
// with Err set rather than failing the whole list.
func (c *Catalog) List() ([]Entry, error) {
	var out []Entry
	err := c.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVolumes).ForEach(func(k, b []byte) error {
			v, err := DecodeVolume(b)
			if err == nil && v.Name != string(k) {
				err = fmt.Errorf("%w: record %q names volume %q", ErrCorrupt, k, v.Name)
			}
			out = append(out, Entry{Name: string(k), Volume: v, Err: err})
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}
