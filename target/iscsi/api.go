package iscsi

import (
	"log/slog"
	"time"

	"tandem.io/tandem/target/scsi"
)

// Config configures a Server.
type Config struct {
	Logger *slog.Logger
	// NOPInterval is how often an idle connection is pinged with NOP-In;
	// zero means DefaultNOPInterval, negative disables.
	NOPInterval time.Duration
	// NOPTimeout is how long an unanswered NOP-In may wait before the
	// connection is dropped; zero means DefaultNOPTimeout.
	NOPTimeout time.Duration
	// TargetPortalGroupTag is this node's portal group tag (TPGT).
	TargetPortalGroupTag uint16
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
