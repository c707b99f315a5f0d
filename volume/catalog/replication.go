package catalog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// What a node keeps for replication, beside its volumes' records: the
// highest epoch it accepted for each volume (so a deposed primary's writes
// are refused after a restart too) and, on a primary, which regions each
// out-of-sync replica misses (so a restart does not turn an incremental
// resync into a full one, nor forget a region).

// maxDirtyRegions bounds a dirty map: 64 Mi regions (8 MiB of bitmap) is a
// 64 TiB volume at 1 MiB regions.
const maxDirtyRegions = 64 << 20

// Epoch returns the highest epoch accepted for volume id (0 if none).
func (c *Catalog) Epoch(id string) (uint64, error) {
	var e uint64
	err := c.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEpochs).Get([]byte(id))
		if b == nil {
			return nil
		}
		if len(b) != 8 {
			return fmt.Errorf("%w: epoch of volume %s is %d bytes", ErrCorrupt, id, len(b))
		}
		e = binary.BigEndian.Uint64(b)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("catalog: epoch of volume %s: %w", id, err)
	}
	return e, nil
}

// SetEpoch records epoch as the highest accepted for volume id; it is on
// disk when SetEpoch returns. A lower epoch than the recorded one is
// refused: the caller raced another acceptance.
func (c *Catalog) SetEpoch(id string, epoch uint64) error {
	err := c.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEpochs)
		if old := b.Get([]byte(id)); len(old) == 8 && binary.BigEndian.Uint64(old) > epoch {
			return fmt.Errorf("%w: epoch %d is below the accepted %d", ErrExists, epoch, binary.BigEndian.Uint64(old))
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], epoch)
		return b.Put([]byte(id), v[:])
	})
	if err != nil {
		return fmt.Errorf("catalog: epoch %d of volume %s: %w", epoch, id, err)
	}
	return nil
}

func dirtyKey(id, replica string) ([]byte, error) {
	if id == "" || strings.Contains(id, "/") {
		return nil, fmt.Errorf("volume ID %q cannot key a dirty map", id)
	}
	return []byte(id + "/" + replica), nil
}

// Dirty returns the regions replica misses of volume id, ascending.
func (c *Catalog) Dirty(id, replica string) ([]uint64, error) {
	key, err := dirtyKey(id, replica)
	if err != nil {
		return nil, err
	}
	var out []uint64
	err = c.db.View(func(tx *bolt.Tx) error {
		out = regions(tx.Bucket(bucketDirty).Get(key))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: dirty map of volume %s for %s: %w", id, replica, err)
	}
	return out, nil
}

// DirtyReplicas returns the replicas that have a dirty map for volume id.
func (c *Catalog) DirtyReplicas(id string) ([]string, error) {
	var out []string
	err := c.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(bucketDirty).Cursor()
		prefix := []byte(id + "/")
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			out = append(out, string(k[len(prefix):]))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: dirty maps of volume %s: %w", id, err)
	}
	return out, nil
}

// MarkDirty adds regions to replica's dirty map of volume id; they are on
// disk when it returns. A map with no region is still a map: the replica
// is known to be out of sync.
func (c *Catalog) MarkDirty(id, replica string, add []uint64) error {
	key, err := dirtyKey(id, replica)
	if err != nil {
		return err
	}
	for _, r := range add {
		if r >= maxDirtyRegions {
			return fmt.Errorf("catalog: dirty region %d of volume %s beyond the %d a map holds", r, id, maxDirtyRegions)
		}
	}
	err = c.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDirty)
		m := append([]byte{}, b.Get(key)...)
		for _, r := range add {
			if need := int(r/8) + 1; len(m) < need {
				m = append(m, make([]byte, need-len(m))...)
			}
			m[r/8] |= 1 << (r % 8)
		}
		return b.Put(key, m)
	})
	if err != nil {
		return fmt.Errorf("catalog: marking %d region(s) of volume %s dirty for %s: %w", len(add), id, replica, err)
	}
	return nil
}

// ClearDirty removes regions from replica's dirty map of volume id; with
// none given, the map itself goes (the replica is in sync again).
func (c *Catalog) ClearDirty(id, replica string, clear []uint64) error {
	key, err := dirtyKey(id, replica)
	if err != nil {
		return err
	}
	err = c.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDirty)
		if len(clear) == 0 {
			return b.Delete(key)
		}
		m := append([]byte{}, b.Get(key)...)
		if m == nil {
			return nil
		}
		for _, r := range clear {
			if int(r/8) < len(m) {
				m[r/8] &^= 1 << (r % 8)
			}
		}
		return b.Put(key, m)
	})
	if err != nil {
		return fmt.Errorf("catalog: clearing %d region(s) of volume %s for %s: %w", len(clear), id, replica, err)
	}
	return nil
}

func deleteDirty(b *bolt.Bucket, id string) error {
	prefix := []byte(id + "/")
	var keys [][]byte
	cur := b.Cursor()
	for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// regions lists the set bits of a bitmap.
func regions(m []byte) []uint64 {
	var out []uint64
	for i, b := range m {
		for b != 0 {
			j := bits.TrailingZeros8(b)
			out = append(out, uint64(i)*8+uint64(j))
			b &^= 1 << j
		}
	}
	return out
}

// dirtyEpochKey keys, in the epochs bucket, the epoch at which this node
// (as primary) keeps the dirty maps of volume id.
func dirtyEpochKey(id string) []byte { return []byte(id + "#dirty") }

// DirtyEpoch returns the epoch at which this node kept the dirty maps of
// volume id (0 if never): maps kept under an older epoch miss what later
// primaries wrote.
func (c *Catalog) DirtyEpoch(id string) (uint64, error) {
	var e uint64
	err := c.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketEpochs).Get(dirtyEpochKey(id)); len(b) == 8 {
			e = binary.BigEndian.Uint64(b)
		}
		return nil
	})
	return e, err
}

// StartDirtyEpoch drops every dirty map of volume id but the named
// survivors (the activity log) and records epoch as the one the maps are
// kept at from now on, in one commit.
func (c *Catalog) StartDirtyEpoch(id string, epoch uint64, keep ...string) error {
	err := c.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDirty)
		prefix := []byte(id + "/")
		var drop [][]byte
		cur := b.Cursor()
		for k, _ := cur.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = cur.Next() {
			name := string(k[len(prefix):])
			kept := false
			for _, s := range keep {
				kept = kept || s == name
			}
			if !kept {
				drop = append(drop, append([]byte(nil), k...))
			}
		}
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], epoch)
		return tx.Bucket(bucketEpochs).Put(dirtyEpochKey(id), v[:])
	})
	if err != nil {
		return fmt.Errorf("catalog: dirty maps of volume %s at epoch %d: %w", id, epoch, err)
	}
	return nil
}
