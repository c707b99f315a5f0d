package login

import (
	"crypto/rand"
	"crypto/subtle"

	"io"
	"strconv"
	"strings"
)

// Stage is a login stage (CSG/NSG).
type Stage uint8

// Login stages.
const (
	StageSecurity    Stage = 0
	StageOperational Stage = 1
	StageFullFeature Stage = 3
)

// SessionType is Normal or Discovery.
type SessionType uint8

// Session types.
const (
	SessionNormal SessionType = iota
	SessionDiscovery
)

// Auth is a target's access control.
type Auth struct {
	CHAPUser, CHAPSecret     string // non-empty: one-way CHAP required
	MutualUser, MutualSecret string // non-empty: mutual CHAP available
	AllowedInitiators        []string
}

// TargetInfo is what the machine needs to know of a target.
type TargetInfo struct {
	Name, Alias string
	Auth        Auth
	// Unavailable refuses normal logins to the target with Target Error /
	// Service Unavailable (its data cannot be served now; the initiator
	// may retry later).
	Unavailable bool
	// Redirect, when set, answers normal logins with Target Moved
	// Temporarily and this TargetAddress ("host:port,tag"): another portal
	// serves the target now (RFC 7143 §11.13.5, §13.8).
	Redirect string
}

// Config configures a Machine. Zero limits mean the defaults documented.
type Config struct {
	// Lookup finds a target by its TargetName.
	Lookup         func(name string) (TargetInfo, bool)
	PortalGroupTag uint16
	// MaxRecvDataSegmentLength is declared to the initiator (262144).
	MaxRecvDataSegmentLength uint32
	// MaxBurstLength caps the negotiated value (16776192, i.e. 16 MiB - 1 KiB).
	MaxBurstLength uint32
	// FirstBurstLength caps the negotiated value (262144).
	FirstBurstLength uint32
	// MaxOutstandingR2T caps the negotiated value (32).
	MaxOutstandingR2T uint32
	// Rand is the source of CHAP challenges (crypto/rand).
	Rand io.Reader
}

// Request is one reassembled Login Request.
type Request struct {
	Transit, Continue      bool
	CSG, NSG               Stage
	VersionMax, VersionMin uint8
	ISID                   [6]byte
	TSIH                   uint16
	Text                   []byte
}

// Response is the answer to a Request.
type Response struct {
	Transit                   bool
	CSG, NSG                  Stage
	StatusClass, StatusDetail uint8
	Text                      []byte
}

// Result is what a successful login settled.
type Result struct {
	SessionType                               SessionType
	InitiatorName, InitiatorAlias, TargetName string
	Params                                    Params
}

type authState uint8

const (
	authNone  authState = iota // AuthMethod not negotiated yet
	authWaitA                  // CHAP chosen, waiting for CHAP_A
	authWaitR                  // challenge sent, waiting for CHAP_N/CHAP_R
	authDone                   // authenticated (or no authentication needed)
)

// Machine is the target side of one connection's login. Not safe for
// concurrent use.
type Machine struct {
	cfg     Config
	lim     limits
	stage   Stage
	started bool
	done    bool
	failed  bool

	res       Result
	target    TargetInfo
	seen      map[string]bool
	auth      authState
	alg       string
	chapID    byte
	challenge []byte
	declared  bool // our MaxRecvDataSegmentLength was sent
}

// New returns a machine waiting for the first Login Request.
func New(cfg Config) *Machine {
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	lim := limits{
		maxRecvDataSegmentLength: cfg.MaxRecvDataSegmentLength,
		maxBurstLength:           cfg.MaxBurstLength,
		firstBurstLength:         cfg.FirstBurstLength,
		maxOutstandingR2T:        cfg.MaxOutstandingR2T,
	}
	if lim.maxRecvDataSegmentLength == 0 {
		lim.maxRecvDataSegmentLength = 262144
	}
	if lim.maxBurstLength == 0 {
		lim.maxBurstLength = 16776192
	}
	if lim.firstBurstLength == 0 {
		lim.firstBurstLength = 262144
	}
	if lim.maxOutstandingR2T == 0 {
		lim.maxOutstandingR2T = 32
	}
	p := DefaultParams()
	p.TargetMaxRecvDataSegmentLength = lim.maxRecvDataSegmentLength
	return &Machine{cfg: cfg, lim: lim, seen: map[string]bool{}, res: Result{Params: p}}
}

// Done reports whether login completed: the last response moved the
// connection to full-feature phase.
func (m *Machine) Done() bool { return m.done }

// Failed reports whether the last response carried an error status; the
// caller must close the connection after sending it.
func (m *Machine) Failed() bool { return m.failed }

// Result returns what the login settled so far.
func (m *Machine) Result() Result { return m.res }

// Login status codes (RFC 7143 §11.13.5).
const (
	classRedirect  = 1
	classInitiator = 2
	classTarget    = 3

	detailMovedTemporary  = 0x01 // with classRedirect
	detailInitiatorError  = 0x00
	detailUnavailable     = 0x01 // with classTarget: service unavailable
	detailAuthFailure     = 0x01
	detailAuthorization   = 0x02
	detailNotFound        = 0x03
	detailUnsupportedVers = 0x05
	detailMissingParam    = 0x07
	detailSessionType     = 0x09
	detailInvalidRequest  = 0x0b
)

func (m *Machine) fail(req Request, class, detail uint8) Response {
	m.failed, m.done = true, false
	return Response{CSG: req.CSG, StatusClass: class, StatusDetail: detail}
}

// Step handles one Login Request and returns the response to send.
func (m *Machine) Step(req Request) Response {
	if m.done || m.failed {
		return m.fail(req, classInitiator, detailInvalidRequest)
	}
	if req.VersionMin > 0 {
		return m.fail(req, classInitiator, detailUnsupportedVers)
	}
	if req.CSG != StageSecurity && req.CSG != StageOperational {
		return m.fail(req, classInitiator, detailInvalidRequest)
	}
	if req.Transit && (req.NSG <= req.CSG || req.NSG == 2) {
		return m.fail(req, classInitiator, detailInitiatorError)
	}
	if !m.started {
		m.stage = req.CSG
	} else if req.CSG != m.stage {
		return m.fail(req, classInitiator, detailInitiatorError)
	}
	pairs, err := ParseText(req.Text)
	if err != nil {
		return m.fail(req, classInitiator, detailInitiatorError)
	}
	var out []Pair
	first := !m.started
	m.started = true
	if first {
		if resp, ok := m.identify(req, pairs); !ok {
			return resp
		}
	}
	if req.CSG == StageOperational && m.auth != authDone {
		// Skipping (or leaving) the security stage is only allowed when
		// the target asks for no authentication.
		if m.authRequired() {
			return m.fail(req, classInitiator, detailAuthFailure)
		}
		m.auth = authDone
	}
	var chap map[string]string
	for _, kv := range pairs {
		if m.seen[kv.Key] && !strings.HasPrefix(kv.Key, "CHAP_") {
			return m.fail(req, classInitiator, detailInitiatorError)
		}
		m.seen[kv.Key] = true
		class, known := keyClasses[kv.Key]
		switch {
		case class == classDeclarative:
			// Handled by identify; later repeats were caught above.
		case class == classSecurity:
			if req.CSG != StageSecurity {
				return m.fail(req, classInitiator, detailInitiatorError)
			}
			if kv.Key == "AuthMethod" {
				a, ok := m.chooseAuth(kv.Value)
				out = append(out, Pair{"AuthMethod", a})
				if !ok {
					return m.failWith(req, out, classInitiator, detailAuthFailure)
				}
				continue
			}
			if chap == nil {
				chap = map[string]string{}
			}
			chap[kv.Key] = kv.Value
		case class == classTargetOnly:
			return m.fail(req, classInitiator, detailInitiatorError)
		case known || strings.HasPrefix(kv.Key, "X-") || strings.HasPrefix(kv.Key, "X#") || !known:
			a, err := negotiate(&m.res.Params, m.lim, m.res.SessionType == SessionDiscovery, false, kv.Key, kv.Value)
			if err != nil {
				return m.fail(req, classInitiator, detailInitiatorError)
			}
			if a != "" {
				out = append(out, Pair{kv.Key, a})
			}
		}
	}
	if chap != nil {
		more, ok := m.stepCHAP(chap)
		out = append(out, more...)
		if !ok {
			return m.failWith(req, out, classInitiator, detailAuthFailure)
		}
	}
	resp := Response{CSG: req.CSG}
	if first && m.res.SessionType == SessionNormal {
		out = append(out, Pair{"TargetPortalGroupTag", strconv.Itoa(int(m.cfg.PortalGroupTag))})
		if m.target.Alias != "" {
			out = append(out, Pair{"TargetAlias", m.target.Alias})
		}
	}
	if req.Transit {
		ready := true
		if req.CSG == StageSecurity {
			switch {
			case m.auth == authDone:
			case m.auth == authNone && !m.authRequired():
				m.auth = authDone
			case m.auth == authNone:
				// The initiator wants to leave without authenticating.
				return m.failWith(req, out, classInitiator, detailAuthFailure)
			default:
				ready = false // CHAP still under way
			}
		}
		if ready {
			resp.Transit, resp.NSG = true, req.NSG
		}
	}
	// Declare our receive limit once, in the operational stage or on the
	// way to full-feature phase.
	if !m.declared && (req.CSG == StageOperational || resp.Transit && resp.NSG == StageFullFeature) {
		out = append(out, Pair{"MaxRecvDataSegmentLength", strconv.Itoa(int(m.lim.maxRecvDataSegmentLength))})
		m.declared = true
	}
	if resp.Transit {
		m.stage = resp.NSG
		if resp.NSG == StageFullFeature {
			m.done = true
		}
	}
	resp.Text = AppendText(nil, out)
	return resp
}

func (m *Machine) failWith(req Request, out []Pair, class, detail uint8) Response {
	r := m.fail(req, class, detail)
	r.Text = AppendText(nil, out)
	return r
}

// identify handles the declarations of the first request: who logs in, to
// what, and whether they may.
func (m *Machine) identify(req Request, pairs []Pair) (Response, bool) {
	var haveType bool
	for _, kv := range pairs {
		switch kv.Key {
		case "InitiatorName":
			m.res.InitiatorName = kv.Value
		case "InitiatorAlias":
			m.res.InitiatorAlias = kv.Value
		case "TargetName":
			m.res.TargetName = kv.Value
		case "SessionType":
			haveType = true
			switch kv.Value {
			case "Normal":
				m.res.SessionType = SessionNormal
			case "Discovery":
				m.res.SessionType = SessionDiscovery
			default:
				return m.fail(req, classInitiator, detailSessionType), false
			}
		}
	}
	_ = haveType
	if m.res.InitiatorName == "" {
		return m.fail(req, classInitiator, detailMissingParam), false
	}
	if m.res.SessionType == SessionDiscovery {
		m.res.TargetName = ""
		return Response{}, true
	}
	if m.res.TargetName == "" {
		return m.fail(req, classInitiator, detailMissingParam), false
	}
	t, ok := m.cfg.Lookup(m.res.TargetName)
	if !ok {
		return m.fail(req, classInitiator, detailNotFound), false
	}
	m.target = t
	if allow := t.Auth.AllowedInitiators; len(allow) > 0 {
		permitted := false
		for _, a := range allow {
			if strings.EqualFold(a, m.res.InitiatorName) {
				permitted = true
			}
		}
		if !permitted {
			return m.fail(req, classInitiator, detailAuthorization), false
		}
	}
	if t.Unavailable {
		return m.fail(req, classTarget, detailUnavailable), false
	}
	if t.Redirect != "" {
		return m.failWith(req, []Pair{{Key: "TargetAddress", Value: t.Redirect}}, classRedirect, detailMovedTemporary), false
	}
	return Response{}, true
}

func (m *Machine) authRequired() bool {
	return m.res.SessionType == SessionNormal && m.target.Auth.CHAPSecret != ""
}

// chooseAuth picks an AuthMethod from the initiator's list.
func (m *Machine) chooseAuth(list string) (string, bool) {
	offered := map[string]bool{}
	for _, a := range strings.Split(list, ",") {
		offered[a] = true
	}
	switch {
	case m.authRequired() && offered["CHAP"]:
		m.auth = authWaitA
		return "CHAP", true
	case m.authRequired():
		return valReject, false
	case offered["None"]:
		m.auth = authDone
		return "None", true
	}
	// CHAP without a secret to check it against cannot succeed.
	return valReject, false
}

// stepCHAP runs the CHAP exchange (RFC 7143 §12.1.3).
func (m *Machine) stepCHAP(kv map[string]string) ([]Pair, bool) {
	switch m.auth {
	case authWaitA:
		a, ok := kv["CHAP_A"]
		if !ok || len(kv) != 1 {
			return nil, false
		}
		alg, ok := chooseAlgorithm(a)
		if !ok {
			return []Pair{{"CHAP_A", valReject}}, false
		}
		var id [1]byte
		m.challenge = make([]byte, max(16, chapAlgorithms[alg]().Size()))
		if _, err := io.ReadFull(m.cfg.Rand, id[:]); err != nil {
			return nil, false
		}
		if _, err := io.ReadFull(m.cfg.Rand, m.challenge); err != nil {
			return nil, false
		}
		m.alg, m.chapID, m.auth = alg, id[0], authWaitR
		return []Pair{{"CHAP_A", alg}, {"CHAP_I", strconv.Itoa(int(id[0]))}, {"CHAP_C", encodeHex(m.challenge)}}, true
	case authWaitR:
		name, okN := kv["CHAP_N"]
		r, okR := kv["CHAP_R"]
		if !okN || !okR {
			return nil, false
		}
		got, err := decodeBinary(r)
		want := chapResponse(m.alg, m.chapID, m.target.Auth.CHAPSecret, m.challenge)
		if err != nil || name != m.target.Auth.CHAPUser || subtle.ConstantTimeCompare(got, want) != 1 {
			return nil, false
		}
		ci, hasI := kv["CHAP_I"]
		cc, hasC := kv["CHAP_C"]
		if hasI != hasC {
			return nil, false
		}
		m.auth = authDone
		if !hasI {
			return nil, true
		}
		// Mutual: the initiator challenges the target.
		if m.target.Auth.MutualSecret == "" {
			return nil, false
		}
		id, ok := parseCHAPID(ci)
		challenge, err := decodeBinary(cc)
		if !ok || err != nil || len(challenge) == 0 || len(challenge) > 1024 ||
			subtle.ConstantTimeCompare(challenge, m.challenge) == 1 {
			m.auth = authWaitR
			return nil, false
		}
		resp := chapResponse(m.alg, id, m.target.Auth.MutualSecret, challenge)
		return []Pair{{"CHAP_N", m.target.Auth.MutualUser}, {"CHAP_R", encodeHex(resp)}}, true
	}
	return nil, false
}
