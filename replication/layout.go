package replication

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"tandem.io/tandem/volume/block"
)

// Layout is how a volume's data is spread over nodes: "mirror:N", N full
// copies (a Mirror on the primary), or "ec:K+M", K data and M parity chunks
// (erasure coding with klauspost/reedsolomon, not built yet: ParseLayout
// refuses it with a clear error). The catalog keeps it per volume.
type Layout struct {
	// Kind is "mirror" or "ec".
	Kind string
	// Copies is N for a mirror.
	Copies int
	// Data and Parity are K and M for erasure coding.
	Data, Parity int
}

// String is the layout's name, as ParseLayout reads it.
func (l Layout) String() string {
	if l.Kind == "ec" {
		return fmt.Sprintf("ec:%d+%d", l.Data, l.Parity)
	}
	return fmt.Sprintf("mirror:%d", l.Copies)
}

// Nodes is how many nodes the layout places data on.
func (l Layout) Nodes() int {
	if l.Kind == "ec" {
		return l.Data + l.Parity
	}
	return l.Copies
}

// MaxCopies bounds a mirror's copies.
const MaxCopies = 5

// ParseLayout reads "mirror:N" (1 <= N <= MaxCopies). "ec:K+M" is
// recognised and refused: erasure-coded volumes come after failover.
func ParseLayout(s string) (Layout, error) {
	kind, arg, ok := strings.Cut(s, ":")
	switch {
	case !ok:
	case kind == "mirror":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 || n > MaxCopies {
			return Layout{}, fmt.Errorf("layout %q: a mirror has 1 to %d copies", s, MaxCopies)
		}
		return Layout{Kind: "mirror", Copies: n}, nil
	case kind == "ec":
		k, m, ok := strings.Cut(arg, "+")
		kn, err1 := strconv.Atoi(k)
		mn, err2 := strconv.Atoi(m)
		if !ok || err1 != nil || err2 != nil || kn < 1 || mn < 1 {
			return Layout{}, fmt.Errorf("layout %q: erasure coding is ec:K+M, K data and M parity chunks", s)
		}
		return Layout{}, fmt.Errorf("layout %q: erasure-coded volumes are not built yet; use mirror:N", s)
	}
	return Layout{}, fmt.Errorf("layout %q: use mirror:N (N full copies)", s)
}

// Spread is what the node serves a volume's data through on its primary,
// whatever the layout: the target sees a block.Device; the node runs the
// operations that must reach every node holding data (barriers), compares
// them (Verify), follows placement changes and reports progress. Mirror is
// the one Spread today; an erasure-coded spread will be another.
type Spread interface {
	block.Device
	block.Unmapper
	block.Mapper
	block.Sender
	// Barrier runs local, then op on every in-sync node, at one point of
	// the write stream.
	Barrier(ctx context.Context, op []byte, local func() error) error
	Verify(ctx context.Context) ([]Difference, error)
	Status() []ReplicaStatus
	Replicas() []string
	AddReplica(name string, full bool) error
	RemoveReplica(name string) error
	Kick(replica string)
	Fail(replica string, stalled time.Duration, why error)
	Deposed() bool
	Close() error
}

var _ Spread = (*Mirror)(nil)
