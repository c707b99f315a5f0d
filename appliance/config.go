// Package appliance is a Tandem node: it wires the volume store, the iSCSI
// target, the replication links, the raft catalog, gossip and the admin API
// together (in one place, node.go) and decides what is served: the
// reconciler makes each node follow the catalog, the leader's control loops
// admit nodes and fail volumes over, and leases keep a primary that may have
// been replaced from serving.
package appliance

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"tandem.io/tandem/appliance/admin"
	"tandem.io/tandem/appliance/floating"
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

	// Cluster is the gossip address (TCP and UDP); Link the address of
	// the authenticated links (raft, replication, forwarded proposals),
	// the cluster port + 1 when empty.
	Cluster string
	Link    string
	// Join lists cluster (gossip) addresses of nodes to join through; a
	// node without it starts (or goes on as) a cluster of its own.
	Join []string
	// ClusterKeyFile holds the cluster key; empty means DataDir/cluster.key,
	// made on first start.
	ClusterKeyFile string
	// Witness runs a voter that holds no volume data.
	Witness bool
	// InsecureLinks authenticates links but does not encrypt them.
	InsecureLinks bool
	// FloatingAddress (ADDR/PREFIX), when set, is a portal address the
	// raft leader holds on FloatingInterface and moves with leadership
	// (announced with gratuitous ARP), for initiators that know one
	// address only; logins there are redirected to each volume's primary.
	FloatingAddress   string
	FloatingInterface string
	// ReprotectAfter is how long, after a node's lease ended, the raft
	// leader waits before it rebuilds the copies that node held on other
	// nodes with room (0: DefaultReprotectAfter).
	ReprotectAfter time.Duration
	// Lease, for a cluster this node starts, is how long a lease the raft
	// leader grants lets a primary serve without renewing it (0: 1 s). A
	// failed primary's volumes move to a replica about this long after its
	// last renewal. The catalog keeps it for the cluster's life; a node
	// joining a cluster uses the cluster's.
	Lease time.Duration
}

// DefaultReprotectAfter is the default Config.ReprotectAfter: long enough
// for a reboot, short enough that a lost server's copies are rebuilt the
// same hour.
const DefaultReprotectAfter = 10 * time.Minute

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
		Cluster:   "127.0.0.1:7481",
	}
}

// Validate checks the configuration and says what is wrong.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return fmt.Errorf("config: the data directory (--data) is empty")
	}
	for _, a := range []struct{ what, addr string }{{"portal (--portal)", c.Portal}, {"admin API (--api)", c.API},
		{"cluster (--cluster)", c.Cluster}, {"link (--link)", c.LinkAddr()}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("config: %s address %q is not host:port: %v", a.what, a.addr, err)
		}
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			return fmt.Errorf("config: --join address %q is not host:port: %v", j, err)
		}
	}
	if (c.FloatingAddress == "") != (c.FloatingInterface == "") {
		return fmt.Errorf("config: --floating-address and --interface go together")
	}
	if c.FloatingAddress != "" {
		if _, err := floating.ParsePrefix(c.FloatingAddress); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	if c.ReprotectAfter < 0 {
		return fmt.Errorf("config: --reprotect-after %v: must not be negative", c.ReprotectAfter)
	}
	if c.Lease != 0 && (c.Lease < 100*time.Millisecond || c.Lease > time.Minute) {
		return fmt.Errorf("config: lease (--lease) %v: use 100ms to 1m", c.Lease)
	}
	if !validNodeName(c.Name) {
		return fmt.Errorf("config: node name (--name) %q: use 1 to 63 letters, digits, '-', '_' or '.'", c.Name)
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

// LinkAddr is the link address: Link, or the cluster port + 1.
func (c Config) LinkAddr() string {
	if c.Link != "" {
		return c.Link
	}
	host, port, err := net.SplitHostPort(c.Cluster)
	if err != nil {
		return ""
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p >= 65535 {
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(p+1))
}

func validNodeName(n string) bool {
	if n == "" || len(n) > 63 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}
