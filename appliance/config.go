// Package appliance is a Tandem node: it wires the volume store, the iSCSI
// target and the admin API together (in one place, node.go) and decides what
// is served. Today a node stands alone; membership, consensus and failover
// will live here too.
package appliance

import (
	"fmt"
	"log/slog"
	"net"
	"os"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/volume/vfs"
)

// Config configures a node.
type Config struct {
	DataDir   string // node data directory
	Portal    string // iSCSI portal address, host:port
	API       string // admin API address, host:port
	Name      string // node name
	IQNPrefix string // targets are <IQNPrefix>:<volume>
	Logger    *slog.Logger
	// AllowUnsafeFilesystem accepts a data directory on a file system that
	// may not keep layers safe across a power loss (volume.Config's
	// AllowCrashUnsafe), with a warning: labs and tests only.
	AllowUnsafeFilesystem bool
	// FS is the file system the data directory is on; nil means the
	// operating system's. Tests pass a vfs.Faulty to fail the disk under a
	// running node.
	FS vfs.FS
}

// DefaultConfig returns the embedded defaults: a single node on loopback.
func DefaultConfig() Config {
	name, err := os.Hostname()
	if err != nil || name == "" {
		name = "tandem"
	}
	return Config{
		DataDir:   "./tandem-data",
		Portal:    "127.0.0.1:3260",
		API:       "127.0.0.1:7480",
		Name:      name,
		IQNPrefix: "iqn.2026-11.io.tandem",
	}
}

// Validate checks the configuration and says what is wrong.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return fmt.Errorf("config: the data directory (--data) is empty")
	}
	for _, a := range []struct{ what, addr string }{{"portal (--portal)", c.Portal}, {"admin API (--api)", c.API}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("config: %s address %q is not host:port: %v", a.what, a.addr, err)
		}
	}
	if c.Name == "" {
		return fmt.Errorf("config: the node name (--name) is empty")
	}
	if err := admin.ValidateIQN(c.IQNPrefix); err != nil || c.IQNPrefix[:4] != "iqn." {
		return fmt.Errorf("config: IQN prefix (--iqn-prefix) %q must be an iqn. name such as iqn.2026-11.com.example", c.IQNPrefix)
	}
	for _, r := range c.IQNPrefix {
		if r >= 'A' && r <= 'Z' {
			return fmt.Errorf("config: IQN prefix %q must be lowercase", c.IQNPrefix)
		}
	}
	return nil
}
