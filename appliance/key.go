package appliance

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"tandem.io/tandem/replication/link"
)

// clusterKey returns the cluster key: from --cluster-key-file, or from
// DATA/cluster.key, which a node starting a cluster of its own makes on its
// first start. A node that joins must be given the cluster's key: it cannot
// make one up.
func (c Config) clusterKey() (link.Key, error) {
	path := c.ClusterKeyFile
	if path == "" {
		path = filepath.Join(c.DataDir, "cluster.key")
	}
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := link.ParseKey(b)
		if err != nil {
			return link.Key{}, fmt.Errorf("cluster key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return link.Key{}, fmt.Errorf("cluster key: %w", err)
	}
	if c.ClusterKeyFile != "" {
		return link.Key{}, fmt.Errorf("cluster key file %s does not exist: copy cluster.key from the data directory of a node of the cluster", path)
	}
	if len(c.Join) > 0 {
		return link.Key{}, fmt.Errorf("joining a cluster needs its key: copy cluster.key from the data directory of one of its nodes and pass --cluster-key-file")
	}
	k, err := link.NewKey()
	if err != nil {
		return link.Key{}, err
	}
	if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
		return link.Key{}, fmt.Errorf("cluster key: %w", err)
	}
	if err := writeFileSync(path, k.Encode(), 0o600); err != nil {
		return link.Key{}, fmt.Errorf("cluster key %s: %w", path, err)
	}
	return k, nil
}

// writeFileSync writes a new file and syncs it and its directory.
func writeFileSync(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
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
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
