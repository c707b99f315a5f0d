// Package admin is the node's admin API: JSON over HTTP. The handlers, the
// request and response types, and the Go client the CLI uses live together
// so that server and client can never disagree about the wire format.
package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Errors a Backend returns (wrapped) to choose the HTTP status.
var (
	ErrNotFound = errors.New("not found")     // 404
	ErrConflict = errors.New("conflict")      // 409
	ErrInvalid  = errors.New("invalid input") // 400
	// ErrUnavailable: the cluster cannot do it now (no raft leader, the
	// primary unreachable); a retry may succeed.
	ErrUnavailable = errors.New("unavailable") // 503
)

// Size is a byte count given as a JSON number or a string such as "10GiB".
type Size struct {
	Bytes int64
	Text  string // the string form, when one was given
}

func (s *Size) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &s.Text)
	}
	return json.Unmarshal(b, &s.Bytes)
}

func (s Size) MarshalJSON() ([]byte, error) {
	if s.Text != "" {
		return json.Marshal(s.Text)
	}
	return json.Marshal(s.Bytes)
}

// CreateVolumeRequest is the body of POST /v1/volumes.
type CreateVolumeRequest struct {
	Name         string   `json:"name"`
	Size         Size     `json:"size"`
	CHAPUser     string   `json:"chap_user,omitempty"`
	CHAPSecret   string   `json:"chap_secret,omitempty"`
	MutualUser   string   `json:"mutual_user,omitempty"`
	MutualSecret string   `json:"mutual_secret,omitempty"`
	Allow        []string `json:"allow,omitempty"`
	// Copies is how many full copies the volume keeps on distinct nodes;
	// 0 means the default (2 once the cluster has two data nodes).
	Copies int `json:"copies,omitempty"`
	// Layout is how the data is spread, "mirror:N" (the same as Copies
	// N); erasure coding ("ec:K+M") is refused for now.
	Layout string `json:"layout,omitempty"`
}

// Volume describes a volume. Secrets are never returned.
type Volume struct {
	Name           string    `json:"name"`
	IQN            string    `json:"iqn"`
	URL            string    `json:"url"`
	Portal         string    `json:"portal"`
	Size           int64     `json:"size"`
	AllocatedBytes int64     `json:"allocated_bytes"`
	NAA            string    `json:"naa"`
	Serial         string    `json:"serial"`
	Created        time.Time `json:"created"`
	CHAPUser       string    `json:"chap_user,omitempty"`
	CHAP           bool      `json:"chap"`
	MutualCHAP     bool      `json:"mutual_chap"`
	Allow          []string  `json:"allow"`
	Sessions       []Session `json:"sessions"`
	// Snapshots, oldest first.
	Snapshots []Snapshot `json:"snapshots"`
	// Error says why the volume is not served; empty when healthy.
	Error string `json:"error,omitempty"`
	// Layout is how the data is spread: "mirror:N".
	Layout string `json:"layout"`
	// Primary is the node serving the volume to initiators.
	Primary string `json:"primary"`
	// Epoch counts the volume's primaries: it grows whenever the primary
	// changes, and replicas refuse writes of an older one.
	Epoch uint64 `json:"epoch"`
	// Copies says where each copy is, primary first; CopiesWanted how
	// many the layout asks for (more than len(Copies): degraded).
	Copies       []Copy `json:"copies"`
	CopiesWanted int    `json:"copies_wanted"`
	// Served says the primary serves the volume now (its target takes
	// logins).
	Served bool `json:"served"`
}

// Copy is one copy of a volume on a node.
type Copy struct {
	Node string `json:"node"`
	// Role is "primary" or "replica".
	Role string `json:"role"`
	// State is "in-sync", "resyncing", "out-of-sync" (waiting for the
	// node) or "building" (a new copy's first full copy).
	State string `json:"state"`
	// Progress of a resync or rebuild, when one runs.
	Progress *Progress `json:"progress,omitempty"`
}

// Progress is how far a resync or rebuild is.
type Progress struct {
	RegionsTotal  int64 `json:"regions_total"`
	RegionsCopied int64 `json:"regions_copied"`
	BytesCopied   int64 `json:"bytes_copied"`
}

// Node describes a cluster node.
type Node struct {
	Name string `json:"name"`
	// Role is "data" or "witness".
	Role string `json:"role"`
	// Raft is "leader", "voter", "nonvoter" or "" (not in the configuration).
	Raft string `json:"raft"`
	// State is the gossip's view: "alive", "suspect", "dead" or "left".
	State     string `json:"state"`
	Gossip    string `json:"gossip"`
	Link      string `json:"link"`
	Portal    string `json:"portal"`
	API       string `json:"api"`
	UsedBytes int64  `json:"used_bytes"`
	FreeBytes int64  `json:"free_bytes"`
	// Volumes are those the node holds a copy of; Primaries those it
	// serves.
	Volumes   []string `json:"volumes"`
	Primaries []string `json:"primaries"`
}

// CopyRequest adds or moves a copy: the node to use.
type CopyRequest struct {
	Node string `json:"node"`
}

// MoveRequest hands the primary role to another node.
type MoveRequest struct {
	Primary string `json:"primary"`
}

// VerifyResult is what `volume verify` found.
type VerifyResult struct {
	Volume     string   `json:"volume"`
	Copies     []string `json:"copies"`
	Regions    int64    `json:"regions"`
	RegionSize int64    `json:"region_size"`
	// Differences lists every region where a copy differs from the
	// primary's; empty when all copies are identical.
	Differences []Difference `json:"differences"`
}

// Difference is one region where a copy differs from the primary's.
type Difference struct {
	Node   string `json:"node"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
}

// Snapshot describes one snapshot of a volume.
type Snapshot struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Size is the volume's provisioned size when the snapshot was taken.
	Size int64 `json:"size"`
	// OwnBytes is the space the snapshot alone holds.
	OwnBytes int64 `json:"own_bytes"`
	// Clones are the volumes made from it; it cannot be deleted before them.
	Clones []string `json:"clones,omitempty"`
}

// SnapshotRequest creates a snapshot; an empty name means one from the time.
type SnapshotRequest struct {
	Name string `json:"name,omitempty"`
}

// RevertRequest reverts a volume to one of its snapshots. Without Force it
// is refused while initiators are logged in; with Force their sessions are
// closed first.
type RevertRequest struct {
	Snapshot string `json:"snapshot"`
	Force    bool   `json:"force,omitempty"`
}

// CloneRequest makes a new volume from a snapshot of the source (or from
// its current content when Snapshot is empty).
type CloneRequest struct {
	Name     string `json:"name"`
	Snapshot string `json:"snapshot,omitempty"`
}

// ResizeRequest grows a volume.
type ResizeRequest struct {
	Size Size `json:"size"`
}

// Session is an initiator logged in to a volume.
type Session struct {
	Initiator   string    `json:"initiator"`
	ISID        string    `json:"isid"`
	TSIH        uint16    `json:"tsih"`
	Connections []string  `json:"connections"`
	Since       time.Time `json:"since"`
}

// Health is the body of GET /healthz.
type Health struct {
	// Status is "ok" when the node serves, else what it waits for
	// ("starting", "joining").
	Status string `json:"status"`
	Node   string `json:"node"`
	// Cluster is the cluster's ID; Leader the raft leader's name.
	Cluster string `json:"cluster,omitempty"`
	Leader  string `json:"leader,omitempty"`
}

// errorBody is every error response.
type errorBody struct {
	Error string `json:"error"`
}

// ValidateCreate checks the export settings of a request (the store checks
// name and size). The CHAP limits are those of Windows and ESX initiators.
func ValidateCreate(r *CreateVolumeRequest) error {
	switch {
	case (r.CHAPUser == "") != (r.CHAPSecret == ""):
		return fmt.Errorf("%w: CHAP needs both a user and a secret", ErrInvalid)
	case r.CHAPSecret != "" && (len(r.CHAPSecret) < 12 || len(r.CHAPSecret) > 255):
		return fmt.Errorf("%w: the CHAP secret must be 12 to 255 characters (it is %d)", ErrInvalid, len(r.CHAPSecret))
	case (r.MutualUser == "") != (r.MutualSecret == ""):
		return fmt.Errorf("%w: mutual CHAP needs both a user and a secret", ErrInvalid)
	case r.MutualSecret != "" && r.CHAPSecret == "":
		return fmt.Errorf("%w: mutual CHAP needs one-way CHAP too (give --chap-user and --chap-secret)", ErrInvalid)
	case r.MutualSecret != "" && (len(r.MutualSecret) < 12 || len(r.MutualSecret) > 255):
		return fmt.Errorf("%w: the mutual CHAP secret must be 12 to 255 characters (it is %d)", ErrInvalid, len(r.MutualSecret))
	case r.MutualSecret != "" && r.MutualSecret == r.CHAPSecret:
		return fmt.Errorf("%w: the mutual CHAP secret must differ from the initiator's secret", ErrInvalid)
	case len(r.CHAPUser) > 255 || len(r.MutualUser) > 255:
		return fmt.Errorf("%w: CHAP user names are at most 255 characters", ErrInvalid)
	}
	for _, s := range []string{r.CHAPUser, r.CHAPSecret, r.MutualUser, r.MutualSecret} {
		if strings.ContainsAny(s, "\x00") {
			return fmt.Errorf("%w: CHAP names and secrets cannot contain NUL", ErrInvalid)
		}
	}
	for _, a := range r.Allow {
		if err := ValidateIQN(a); err != nil {
			return fmt.Errorf("%w: allowed initiator: %v", ErrInvalid, err)
		}
	}
	return nil
}

// ValidateIQN checks an iSCSI name (RFC 7143 §4.2.7): iqn.yyyy-mm.domain[:x],
// eui.<16 hex>, or naa.<16 or 32 hex>.
func ValidateIQN(name string) error {
	bad := fmt.Errorf("%q is not an iSCSI name (iqn.yyyy-mm.reversed.domain[:id], eui.<16 hex digits> or naa.<16 or 32 hex digits>)", name)
	if len(name) > 223 {
		return fmt.Errorf("%q is longer than 223 bytes", name)
	}
	lower := strings.ToLower(name)
	switch {
	case strings.HasPrefix(lower, "iqn."):
		rest := name[4:]
		if len(rest) < 9 || rest[4] != '-' || rest[7] != '.' {
			return bad
		}
		if _, err := strconv.Atoi(rest[:4]); err != nil {
			return bad
		}
		if m, err := strconv.Atoi(rest[5:7]); err != nil || m < 1 || m > 12 {
			return bad
		}
		for _, c := range rest[8:] {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == ':' || c >= 'A' && c <= 'Z') {
				return bad
			}
		}
		return nil
	case strings.HasPrefix(lower, "eui."):
		if len(name) != 20 || !isHex(name[4:]) {
			return bad
		}
		return nil
	case strings.HasPrefix(lower, "naa."):
		if (len(name) != 20 && len(name) != 36) || !isHex(name[4:]) {
			return bad
		}
		return nil
	}
	return bad
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return s != ""
}
