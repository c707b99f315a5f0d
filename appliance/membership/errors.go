package membership

import (
	"errors"
	"fmt"
	"strings"
)

// Errors returned by the package, wrapped with the values involved.
var (
	ErrConfig       = errors.New("invalid membership config")
	ErrInvalidMeta  = errors.New("invalid node metadata")
	ErrMetaTooLarge = errors.New("node metadata too large")
	ErrInvalidMsg   = errors.New("invalid membership message")
	ErrClosed       = errors.New("membership closed")
	// ErrLeft: the node left the cluster; it can no longer join or update.
	ErrLeft = errors.New("membership: this node left the cluster")
	// ErrNameConflict: another node at another address has this node's
	// name. memberlist keeps the first one it knew; the other is ignored.
	ErrNameConflict = errors.New("another node has the same name")
)

// JoinError lists the addresses a Join could not join through.
type JoinError struct {
	Failed []AddrError
}

// AddrError is one address a Join could not join through, and why.
type AddrError struct {
	Addr string
	Err  error
}

func (e *JoinError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "membership: join failed through %d address(es):", len(e.Failed))
	for i, f := range e.Failed {
		if i > 0 {
			b.WriteByte(';')
		}
		fmt.Fprintf(&b, " %s: %v", f.Addr, f.Err)
	}
	return b.String()
}

// Unwrap returns each address's error.
func (e *JoinError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f.Err
	}
	return errs
}
