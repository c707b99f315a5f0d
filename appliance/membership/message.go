package membership

import (
	"encoding/binary"
	"fmt"
)

// Messages members send each other directly, through memberlist's user
// messages (SendReliable, received by Delegate.NotifyMsg), encrypted and
// authenticated like all gossip.
//
// They exist for Leave. memberlist tells a node that left from one that
// failed internally (StateLeft) but gives its EventDelegate the same leave
// event for both, so a leaving node first tells each live peer that it is
// leaving (msgLeaving) and waits for each to acknowledge (msgLeavingAck)
// before memberlist gossips its departure: a peer that acknowledged takes the
// departure for a leave, whichever of the two it hears of first.

// Message kinds: the first byte, followed by a node's name (uvarint length,
// bytes): the leaving node's in msgLeaving, the acknowledging one's in
// msgLeavingAck.
const (
	msgLeaving    = 1
	msgLeavingAck = 2

	maxNameLen = 64
)

func appendMsg(b []byte, kind byte, name string) []byte {
	b = append(b, kind)
	b = binary.AppendUvarint(b, uint64(len(name)))
	return append(b, name...)
}

// parseMsg decodes a message and returns its kind and name.
func parseMsg(p []byte) (byte, string, error) {
	if len(p) == 0 || p[0] != msgLeaving && p[0] != msgLeavingAck {
		return 0, "", fmt.Errorf("%w: %d bytes, unknown kind", ErrInvalidMsg, len(p))
	}
	d := decoder{p: p[1:]}
	name := d.string("name", maxNameLen)
	if d.err != nil {
		return 0, "", fmt.Errorf("%w: kind %d: %v", ErrInvalidMsg, p[0], d.err)
	}
	if name == "" || len(d.p) != 0 {
		return 0, "", fmt.Errorf("%w: kind %d: name %q, %d trailing bytes", ErrInvalidMsg, p[0], name, len(d.p))
	}
	return p[0], name, nil
}
