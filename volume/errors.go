package volume

import (
	"errors"

	"tandem.io/tandem/volume/catalog"
)

// Errors returned by the store, wrapped with the values involved.
var (
	ErrNotFound    = catalog.ErrNotFound
	ErrExists      = catalog.ErrExists
	ErrCorrupt     = catalog.ErrCorrupt
	ErrInvalidName = errors.New("invalid volume name")
	ErrInvalidSize = errors.New("invalid volume size")
	ErrUnavailable = errors.New("volume unavailable")
	// ErrInUse: the operation would break something that depends on the
	// volume or snapshot (clones, logged-in initiators).
	ErrInUse = errors.New("in use")
	// ErrShrink: volumes only grow.
	ErrShrink = errors.New("a volume cannot shrink")
)
