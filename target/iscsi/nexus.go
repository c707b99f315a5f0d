package iscsi

import (
	"sort"

	"tandem.io/tandem/target/scsi"
)

// SessionNexus is the I_T nexus of a logged-in normal session and where it
// comes from.
type SessionNexus struct {
	Target    string // target name
	Initiator string // initiator name, as the initiator gave it at login
	Nexus     scsi.Nexus
	// RemoteAddr is the address (host:port) the session's connection
	// comes from.
	RemoteAddr string
}

// SessionNexuses lists the nexuses of the normal sessions logged in to the
// server's targets, sorted by target and initiator port. Each session
// passed its target's authentication and allow list; a session whose
// connection has ended is not listed. Read-only: the appliance uses it to
// decide which logical units an EXTENDED COPY may reach.
func (s *Server) SessionNexuses() []SessionNexus {
	s.mu.Lock()
	var list []*session
	for _, ss := range s.sessions {
		if ss.target != nil {
			list = append(list, ss)
		}
	}
	s.mu.Unlock()
	out := make([]SessionNexus, 0, len(list))
	for _, ss := range list {
		ss.mu.Lock()
		c := ss.conn
		ss.mu.Unlock()
		if c == nil {
			continue
		}
		out = append(out, SessionNexus{Target: ss.key.target, Initiator: ss.initiator, Nexus: ss.nexus, RemoteAddr: c.nc.RemoteAddr().String()})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Target != out[j].Target {
			return out[i].Target < out[j].Target
		}
		return out[i].Nexus.InitiatorPort < out[j].Nexus.InitiatorPort
	})
	return out
}
