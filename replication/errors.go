package replication

import (
	"errors"
	"fmt"

	"tandem.io/tandem/volume/block"
)

var (
	// ErrDeposed: a replica accepted a newer epoch for the volume, so this
	// primary is no longer the primary. A Mirror that saw it fails every
	// later I/O; errors wrapping it also wrap block.ErrClosed, which the
	// target answers with ABORTED COMMAND so that the initiator retries
	// (on another path once this node stops serving the volume).
	ErrDeposed = errors.New("replication: primary deposed")
	// ErrStaleEpoch: an epoch older than the one the node accepted.
	ErrStaleEpoch = errors.New("replication: stale epoch")
	// ErrProtocol: the peer broke the protocol; the connection is closed.
	ErrProtocol = errors.New("replication: protocol error")
	// ErrTimeout: a replica did not answer within the replica timeout.
	ErrTimeout = errors.New("replication: replica timed out")
)

// StatusError is a replica's non-OK reply.
type StatusError struct {
	Replica string
	Status  Status
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("replica %s: %v: %s", e.Replica, e.Status, e.Message)
}

// Unwrap maps the status to the block error it stands for, so that
// errors.Is(err, block.ErrMedium) and the like work across the wire.
func (e *StatusError) Unwrap() error {
	switch e.Status {
	case StatusStaleEpoch:
		return ErrStaleEpoch
	case StatusMedium:
		return block.ErrMedium
	case StatusNoSpace:
		return block.ErrNoSpace
	case StatusOutOfRange:
		return block.ErrOutOfRange
	case StatusProtocol:
		return ErrProtocol
	}
	return nil
}

// statusOf maps a local error to the status a replica answers with.
func statusOf(err error) Status {
	switch {
	case err == nil:
		return StatusOK
	case errors.Is(err, ErrStaleEpoch):
		return StatusStaleEpoch
	case errors.Is(err, block.ErrOutOfRange):
		return StatusOutOfRange
	case errors.Is(err, block.ErrNoSpace):
		return StatusNoSpace
	case errors.Is(err, block.ErrMedium):
		return StatusMedium
	}
	return StatusFailed
}
