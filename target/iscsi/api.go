package iscsi

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"tandem.io/tandem/target/iscsi/pdu"
	"tandem.io/tandem/target/scsi"
)

// Config configures a Server. Zero values mean the defaults named.
//
// Memory: what initiators can make the server hold is bounded, whatever
// they send. One session holds at most
//
//	InitiatorBufferBudget bytes of command buffers
//	+ (QueueDepth + ImmediateCommands) commands, each about 10 KiB
//	  (task, goroutine stack)
//	+ 5 × MaxRecvDataSegmentLength of NOP-In and Text replies (4 queued,
//	  1 being read)
//	+ about 0.5 MiB for its connection (256 KiB read buffer, write buffer,
//	  a send queue of 512 entries, at most 8 pending task management
//	  requests)
//
// which with the defaults is 128 MiB + about 3 MiB. The whole server holds
// at most BufferBudget bytes of command buffers (1 GiB) plus MaxSessions
// times the per-session overhead above, plus at most 64 connections in the
// login phase (about 0.4 MiB each; more are closed at once).
//
// Commands beyond a session's window are ignored, immediate ones beyond
// ImmediateCommands rejected, and a command whose buffer does not fit the
// session's or the server's budget gets TASK SET FULL; ignored and
// rejected PDUs are charged to their connection, which is read more
// slowly once it has sent more than 4 MiB of them in a second. An
// initiator that stops reading its responses is dropped once a write to
// it has blocked for NOPTimeout, which frees all it held. These are bytes
// the server holds; the process's resident size adds the Go runtime's own
// (garbage not yet collected, stacks, pools).
type Config struct {
	Logger *slog.Logger
	// NOPInterval is how long a connection may be idle before the target
	// pings it with NOP-In (DefaultNOPInterval); negative disables.
	NOPInterval time.Duration
	// NOPTimeout is how long a NOP-In may go unanswered, and how long a
	// write to the initiator may block, before the connection is dropped
	// (DefaultNOPTimeout).
	NOPTimeout time.Duration
	// TargetPortalGroupTag is this node's portal group tag (1).
	TargetPortalGroupTag uint16
	// RelativePortID and TargetPortGroup identify this node's target port
	// for SCSI (VPD 0x83, ALUA); both default to 1.
	RelativePortID, TargetPortGroup uint16
	// QueueDepth is the command window of a session: the most commands it
	// may have outstanding (DefaultQueueDepth), besides at most
	// ImmediateCommands immediate ones.
	QueueDepth uint32
	// MaxRecvDataSegmentLength is the largest data segment the target
	// accepts (262144).
	MaxRecvDataSegmentLength uint32
	// MaxSessions bounds the sessions of the whole server (1024).
	MaxSessions int
	// MaxTransferLength bounds one command's data (DefaultMaxTransfer).
	MaxTransferLength uint32
	// BufferBudget bounds the bytes of command buffers held at once across
	// all sessions (1 GiB); commands beyond it get TASK SET FULL.
	BufferBudget int64
	// InitiatorBufferBudget bounds the part of BufferBudget one initiator
	// holds, all its sessions together (by initiator name), so that one
	// host, whatever number of sessions it opens, cannot take it all and
	// starve the others (BufferBudget/8, at least MaxTransferLength);
	// commands beyond it get TASK SET FULL. It must be at least
	// MaxTransferLength.
	InitiatorBufferBudget int64
}

// ImmediateCommands is how many immediate SCSI commands (I bit set) a
// session may have in flight besides its command window. RFC 7143 §4.2.2.1
// requires at least one; initiators use immediate delivery for task
// management and NOP-Out, rarely for SCSI commands. One more is rejected
// with reason 0x06, "Immediate Command Reject - too many immediate
// commands", and may be resent (RFC 7143 §11.17.1).
const ImmediateCommands = 4

// Defaults for Config.
const (
	DefaultNOPInterval = 5 * time.Second
	DefaultNOPTimeout  = 15 * time.Second
	DefaultQueueDepth  = 128
	DefaultMaxTransfer = 32 << 20
)

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.NOPInterval == 0 {
		c.NOPInterval = DefaultNOPInterval
	}
	if c.NOPTimeout == 0 {
		c.NOPTimeout = DefaultNOPTimeout
	}
	if c.TargetPortalGroupTag == 0 {
		c.TargetPortalGroupTag = 1
	}
	if c.RelativePortID == 0 {
		c.RelativePortID = 1
	}
	if c.TargetPortGroup == 0 {
		c.TargetPortGroup = 1
	}
	if c.QueueDepth == 0 {
		c.QueueDepth = DefaultQueueDepth
	}
	if c.MaxRecvDataSegmentLength == 0 {
		c.MaxRecvDataSegmentLength = 256 << 10
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = 1024
	}
	if c.MaxTransferLength == 0 {
		c.MaxTransferLength = DefaultMaxTransfer
	}
	if c.BufferBudget == 0 {
		c.BufferBudget = 1 << 30
	}
	if c.InitiatorBufferBudget == 0 {
		c.InitiatorBufferBudget = min(max(c.BufferBudget/8, int64(c.MaxTransferLength)), c.BufferBudget)
	}
}

// validate checks a Config with its defaults set.
func (c *Config) validate() error {
	switch {
	case c.QueueDepth > 1<<16:
		return fmt.Errorf("iscsi: queue depth %d too large (at most 65536)", c.QueueDepth)
	case c.MaxRecvDataSegmentLength < 512 || c.MaxRecvDataSegmentLength > pdu.MaxDataSegmentLength:
		return fmt.Errorf("iscsi: MaxRecvDataSegmentLength %d outside 512..%d", c.MaxRecvDataSegmentLength, pdu.MaxDataSegmentLength)
	case c.BufferBudget < int64(c.MaxTransferLength):
		return fmt.Errorf("iscsi: BufferBudget %d below MaxTransferLength %d (a command of the largest size must fit)",
			c.BufferBudget, c.MaxTransferLength)
	case c.InitiatorBufferBudget < int64(c.MaxTransferLength) || c.InitiatorBufferBudget > c.BufferBudget:
		return fmt.Errorf("iscsi: InitiatorBufferBudget %d outside MaxTransferLength %d..BufferBudget %d (a command of the largest size must fit)",
			c.InitiatorBufferBudget, c.MaxTransferLength, c.BufferBudget)
	}
	return nil
}

// TargetConfig describes one iSCSI target (one per volume).
type TargetConfig struct {
	// Name is the target's iSCSI name (IQN).
	Name string
	// Alias is the optional TargetAlias.
	Alias string
	Auth  Auth
	// SCSI executes the target's commands and owns its logical units.
	SCSI *scsi.Target
	// Unavailable, when set, says why the target's data cannot be served
	// (a damaged volume): the target is listed by SendTargets, and logins
	// get Target Error / Service Unavailable (RFC 7143 §11.13.5) instead
	// of a session; SCSI may then be nil.
	Unavailable string
	// Redirect, when set, is the portal (host:port) that serves the target
	// now: logins get Target Moved Temporarily to it, and SendTargets
	// gives it as the target's address. SCSI may then be nil, unless
	// RedirectAt is set. A cluster node redirects to a volume's primary.
	Redirect string
	// RedirectFor, when set, is asked for every login and discovery
	// arriving at local: a portal (host:port, or host:port,tag when its
	// portal group tag is not this server's) redirects it there, ""
	// serves it here (SCSI is then required). A cluster node redirects
	// logins that reach it through the floating portal address, which
	// stands for the primary, and serves its own target port at its own
	// address.
	RedirectFor func(local net.Addr) string
	// Portals, when set, gives the addresses SendTargets lists for the
	// target ("host:port,tag": every node's portal that serves it) to a
	// discovery arriving at local, instead of the portal the initiator
	// reached (also when it gives none).
	Portals func(local net.Addr) []string
}

// TargetPort identifies the server's target port: the portal group tag
// logins answer with, and the relative target port identifier and target
// port group SCSI reports (VPD 0x83, ALUA). In a cluster each node has its
// own, the same for every volume.
type TargetPort struct {
	PortalGroupTag, RelativePortID, PortGroup uint16
}

// Auth is a target's access control.
type Auth struct {
	// CHAPUser and CHAPSecret, when set, require one-way CHAP: the initiator
	// proves it knows the secret.
	CHAPUser, CHAPSecret string
	// MutualUser and MutualSecret, when set, let the initiator ask the target
	// to prove itself too (mutual CHAP).
	MutualUser, MutualSecret string
	// AllowedInitiators, when not empty, lists the only initiator names that
	// may log in.
	AllowedInitiators []string
}

// SessionInfo describes a logged-in session for the admin API.
type SessionInfo struct {
	Target      string    `json:"target"`
	Initiator   string    `json:"initiator"`
	ISID        string    `json:"isid"`
	TSIH        uint16    `json:"tsih"`
	Connections []string  `json:"connections"` // remote addresses
	Since       time.Time `json:"since"`
}
