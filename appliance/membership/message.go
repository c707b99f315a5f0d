package membership

import (
	"encoding/binary"
	"fmt"
)

// Messages members send each other through memberlist's user messages
// (Delegate.NotifyMsg), encrypted and authenticated like all gossip.
//
// There is one: a leaving node tells each peer, before memberlist
// broadcasts its departure, that it is about to leave. memberlist tells a
// departure by a node itself from a failure internally (StateLeft) but does
// not say which it was to the EventDelegate, so without this message every
// departure would look like a failure.

const (
	msgLeaving = 1 // kind byte, then the node's name (uvarint length, bytes)

	maxNameLen = 64
)

func appendLeaving(b []byte, name string) []byte {
	b = append(b, msgLeaving)
	b = binary.AppendUvarint(b, uint64(len(name)))
	return append(b, name...)
}

// parseLeaving decodes a leaving message and returns the leaving node's name.
func parseLeaving(p []byte) (string, error) {
	if len(p) == 0 || p[0] != msgLeaving {
		return "", fmt.Errorf("%w: %d bytes, not a leaving message", ErrInvalidMsg, len(p))
	}
	d := decoder{p: p[1:]}
	name := d.string("name", maxNameLen)
	if d.err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidMsg, d.err)
	}
	if name == "" || len(d.p) != 0 {
		return "", fmt.Errorf("%w: leaving message: name %q, %d trailing bytes", ErrInvalidMsg, name, len(d.p))
	}
	return name, nil
}
