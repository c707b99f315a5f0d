package cluster

import (
	"errors"
	"fmt"
)

// Errors, wrapped with the values involved. A command refused by the
// catalog returns one of ErrInvalid, ErrNotFound, ErrExists, ErrConflict,
// ErrStaleEpoch or ErrNotPrimary, on every node alike: the log entry is
// committed but changes nothing. The others say why a command could not be
// committed at all.
var (
	// ErrInvalid: the command is malformed (an empty name, a size <= 0).
	ErrInvalid = errors.New("invalid command")
	// ErrNotFound: the node, volume or snapshot named does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a name or ID is already taken.
	ErrExists = errors.New("already exists")
	// ErrConflict: the command does not fit the current state (a clone
	// depends on it, it is the primary, a volume would shrink).
	ErrConflict = errors.New("conflict")
	// ErrStaleEpoch: the command names an epoch that is not the volume's
	// current one; the requester's view is out of date (it may be deposed).
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrNotPrimary: the requester of a replica change is not the volume's
	// primary.
	ErrNotPrimary = errors.New("requester is not the primary")
	// ErrNotLeader: the operation needs the raft leader and this node is
	// not it (Admit, Remove; a forwarded proposal reaching a deposed
	// leader, which Propose retries).
	ErrNotLeader = errors.New("not the raft leader")
	// ErrNoLeader: no leader could be reached before the context ended.
	ErrNoLeader = errors.New("no raft leader")
	// ErrOutcomeUnknown: the leader lost its leadership, or the connection
	// to it broke, after the command was sent: it may or may not have been
	// committed. Read the state to find out.
	ErrOutcomeUnknown = errors.New("outcome unknown")
	// ErrClosed: the Cluster is closed.
	ErrClosed = errors.New("cluster closed")
	// ErrUnsupported: an encoded command or snapshot of a version or kind
	// this node does not know (a newer node wrote it).
	ErrUnsupported = errors.New("unsupported encoding")
	// ErrTooLarge: a frame or a command exceeds its size limit.
	ErrTooLarge = errors.New("too large")
)

// errorCodes name the sentinels on the wire, so that a forwarded proposal's
// error is still errors.Is-comparable on the follower.
var errorCodes = []struct {
	code string
	err  error
}{
	{"invalid", ErrInvalid},
	{"not-found", ErrNotFound},
	{"exists", ErrExists},
	{"conflict", ErrConflict},
	{"stale-epoch", ErrStaleEpoch},
	{"not-primary", ErrNotPrimary},
	{"not-leader", ErrNotLeader},
	{"no-leader", ErrNoLeader},
	{"outcome-unknown", ErrOutcomeUnknown},
	{"closed", ErrClosed},
	{"unsupported", ErrUnsupported},
	{"too-large", ErrTooLarge},
}

// errorCode returns the wire code of err's sentinel, "error" if it has none.
func errorCode(err error) string {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "error"
}

// remoteError is an error received from the leader: its message, and the
// sentinel its code names (nil for "error").
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// decodeError rebuilds an error sent as code and message.
func decodeError(code, msg string) error {
	for _, c := range errorCodes {
		if c.code == code {
			return &remoteError{msg: msg, sentinel: c.err}
		}
	}
	if msg == "" {
		msg = fmt.Sprintf("leader error (code %q)", code)
	}
	return &remoteError{msg: msg}
}
