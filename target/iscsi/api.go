package iscsi

import (
	"log/slog"
	"time"

	"tandem.io/tandem/target/scsi"
)

// Config configures a Server. Zero values mean the defaults named.
type Config struct {
	Logger *slog.Logger
	// NOPInterval is how long a connection may be idle before the target
	// pings it with NOP-In (DefaultNOPInterval); negative disables.
	NOPInterval time.Duration
	// NOPTimeout is how long a NOP-In may go unanswered before the
	// connection is dropped (DefaultNOPTimeout).
	NOPTimeout time.Duration
	// TargetPortalGroupTag is this node's portal group tag (1).
	TargetPortalGroupTag uint16
	// RelativePortID and TargetPortGroup identify this node's target port
	// for SCSI (VPD 0x83, ALUA); both default to 1.
	RelativePortID, TargetPortGroup uint16
	// QueueDepth is the command window of a session: the most commands it
	// may have outstanding (DefaultQueueDepth).
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
}

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
