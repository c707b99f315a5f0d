package login

import (
	"fmt"
	"strconv"
	"strings"
)

// Params are a connection's negotiated operational parameters (RFC 7143 §13).
type Params struct {
	HeaderDigest, DataDigest bool // CRC32C when true
	// MaxRecvDataSegmentLength is declared by the initiator: the most the
	// target may send in one PDU.
	MaxRecvDataSegmentLength uint32
	// TargetMaxRecvDataSegmentLength is the target's own declaration: the
	// most the initiator may send in one PDU.
	TargetMaxRecvDataSegmentLength       uint32
	MaxBurstLength, FirstBurstLength     uint32
	InitialR2T, ImmediateData            bool
	MaxOutstandingR2T                    uint32
	DataPDUInOrder, DataSequenceInOrder  bool
	DefaultTime2Wait, DefaultTime2Retain uint32
	ErrorRecoveryLevel                   uint32
	MaxConnections                       uint32
}

// DefaultParams returns the RFC 7143 defaults.
func DefaultParams() Params {
	return Params{
		MaxRecvDataSegmentLength:       8192,
		TargetMaxRecvDataSegmentLength: 8192,
		MaxBurstLength:                 262144,
		FirstBurstLength:               65536,
		InitialR2T:                     true,
		ImmediateData:                  true,
		MaxOutstandingR2T:              1,
		DataPDUInOrder:                 true,
		DataSequenceInOrder:            true,
		DefaultTime2Wait:               2,
		DefaultTime2Retain:             20,
		ErrorRecoveryLevel:             0,
		MaxConnections:                 1,
	}
}

// Values a key may be answered with besides a real value.
const (
	valReject        = "Reject"
	valIrrelevant    = "Irrelevant"
	valNotUnderstood = "NotUnderstood"
)

// limits are what this target supports or offers.
type limits struct {
	maxRecvDataSegmentLength uint32
	maxBurstLength           uint32
	firstBurstLength         uint32
	maxOutstandingR2T        uint32
}

func parseNumber(v string) (uint64, bool) {
	if v == "" {
		return 0, false
	}
	if strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X") {
		n, err := strconv.ParseUint(v[2:], 16, 64)
		return n, err == nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil
}

func parseBool(v string) (bool, bool) {
	switch v {
	case "Yes":
		return true, true
	case "No":
		return false, true
	}
	return false, false
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// keyClass says where a key may appear.
type keyClass uint8

const (
	classUnknown     keyClass = iota
	classDeclarative          // initiator declares; no answer
	classSecurity             // security stage only
	classOperational          // negotiated; session-wide unless noted
	classTargetOnly           // the initiator must not send it
)

var keyClasses = map[string]keyClass{
	"InitiatorName": classDeclarative, "InitiatorAlias": classDeclarative, "TargetName": classDeclarative,
	"SessionType": classDeclarative, "MaxRecvDataSegmentLength": classOperational,
	"AuthMethod": classSecurity, "CHAP_A": classSecurity, "CHAP_I": classSecurity, "CHAP_C": classSecurity,
	"CHAP_N": classSecurity, "CHAP_R": classSecurity,
	"HeaderDigest": classOperational, "DataDigest": classOperational, "MaxConnections": classOperational,
	"InitialR2T": classOperational, "ImmediateData": classOperational, "MaxBurstLength": classOperational,
	"FirstBurstLength": classOperational, "DefaultTime2Wait": classOperational, "DefaultTime2Retain": classOperational,
	"MaxOutstandingR2T": classOperational, "DataPDUInOrder": classOperational, "DataSequenceInOrder": classOperational,
	"ErrorRecoveryLevel": classOperational, "IFMarker": classOperational, "OFMarker": classOperational,
	"IFMarkInt": classOperational, "OFMarkInt": classOperational, "iSCSIProtocolLevel": classOperational,
	"TaskReporting": classOperational, "SendTargets": classOperational,
	"TargetAlias": classTargetOnly, "TargetAddress": classTargetOnly, "TargetPortalGroupTag": classTargetOnly,
}

// discoveryIrrelevant lists keys that do not apply to discovery sessions.
var discoveryIrrelevant = map[string]bool{
	"MaxConnections": true, "InitialR2T": true, "ImmediateData": true, "MaxBurstLength": true,
	"FirstBurstLength": true, "MaxOutstandingR2T": true, "DataPDUInOrder": true, "DataSequenceInOrder": true,
}

// negotiate applies one operational key to p and returns the answer, or ""
// for a declaration that needs none. fullFeature restricts it to the keys
// that may be renegotiated after login.
func negotiate(p *Params, lim limits, discovery, fullFeature bool, key, value string) (answer string, err error) {
	if discovery && discoveryIrrelevant[key] {
		return valIrrelevant, nil
	}
	if fullFeature && key != "MaxRecvDataSegmentLength" {
		// Only connection-only declaratives may change in full-feature
		// phase (RFC 7143 §13); the rest is settled at login.
		if _, known := keyClasses[key]; known {
			return valReject, nil
		}
		return valNotUnderstood, nil
	}
	num := func(min, max uint64) (uint64, bool) {
		n, ok := parseNumber(value)
		return n, ok && n >= min && n <= max
	}
	switch key {
	case "HeaderDigest", "DataDigest":
		for _, v := range strings.Split(value, ",") {
			if v == "CRC32C" || v == "None" {
				if key == "HeaderDigest" {
					p.HeaderDigest = v == "CRC32C"
				} else {
					p.DataDigest = v == "CRC32C"
				}
				return v, nil
			}
		}
		return valReject, nil
	case "MaxRecvDataSegmentLength":
		n, ok := num(512, 1<<24-1)
		if !ok {
			return "", fmt.Errorf("MaxRecvDataSegmentLength=%q is not a number in 512..16777215", value)
		}
		p.MaxRecvDataSegmentLength = uint32(n)
		return "", nil
	case "MaxConnections":
		if _, ok := num(1, 65535); !ok {
			return valReject, nil
		}
		p.MaxConnections = 1
		return "1", nil
	case "InitialR2T", "ImmediateData", "DataPDUInOrder", "DataSequenceInOrder":
		b, ok := parseBool(value)
		if !ok {
			return valReject, nil
		}
		switch key {
		case "InitialR2T": // OR: Yes if either side says Yes; we say No
			p.InitialR2T = b
		case "ImmediateData": // AND; we say Yes
			p.ImmediateData = b
		case "DataPDUInOrder": // OR; we say Yes
			p.DataPDUInOrder, b = true, true
		case "DataSequenceInOrder":
			p.DataSequenceInOrder, b = true, true
		}
		return yesNo(b), nil
	case "MaxBurstLength", "FirstBurstLength":
		n, ok := num(512, 1<<24-1)
		if !ok {
			return valReject, nil
		}
		if key == "MaxBurstLength" {
			p.MaxBurstLength = uint32(min(n, uint64(lim.maxBurstLength)))
			if p.FirstBurstLength > p.MaxBurstLength {
				p.FirstBurstLength = p.MaxBurstLength
			}
			return strconv.Itoa(int(p.MaxBurstLength)), nil
		}
		p.FirstBurstLength = uint32(min(n, uint64(lim.firstBurstLength), uint64(p.MaxBurstLength)))
		return strconv.Itoa(int(p.FirstBurstLength)), nil
	case "DefaultTime2Wait":
		n, ok := num(0, 3600)
		if !ok {
			return valReject, nil
		}
		p.DefaultTime2Wait = uint32(n) // max(n, 0)
		return strconv.Itoa(int(n)), nil
	case "DefaultTime2Retain":
		if _, ok := num(0, 3600); !ok {
			return valReject, nil
		}
		p.DefaultTime2Retain = 0 // min(n, 0): no state is kept for recovery at ERL 0
		return "0", nil
	case "MaxOutstandingR2T":
		n, ok := num(1, 65535)
		if !ok {
			return valReject, nil
		}
		p.MaxOutstandingR2T = uint32(min(n, uint64(lim.maxOutstandingR2T)))
		return strconv.Itoa(int(p.MaxOutstandingR2T)), nil
	case "ErrorRecoveryLevel":
		if _, ok := num(0, 2); !ok {
			return valReject, nil
		}
		p.ErrorRecoveryLevel = 0
		return "0", nil
	case "IFMarker", "OFMarker":
		if _, ok := parseBool(value); !ok {
			return valReject, nil
		}
		return "No", nil
	case "IFMarkInt", "OFMarkInt":
		return valIrrelevant, nil
	case "iSCSIProtocolLevel":
		n, ok := num(0, 31)
		if !ok {
			return valReject, nil
		}
		return strconv.Itoa(int(min(n, 1))), nil
	case "TaskReporting":
		return "RFC3720", nil
	case "SendTargets":
		return valIrrelevant, nil
	}
	return valNotUnderstood, nil
}

// NegotiateFullFeature answers the keys of a Text Request in full-feature
// phase (other than SendTargets, which the caller answers), updating p.
func NegotiateFullFeature(p *Params, pairs []Pair) ([]Pair, error) {
	var out []Pair
	seen := map[string]bool{}
	for _, kv := range pairs {
		if seen[kv.Key] {
			return nil, fmt.Errorf("login: key %s sent twice", kv.Key)
		}
		seen[kv.Key] = true
		a, err := negotiate(p, limits{}, false, true, kv.Key, kv.Value)
		if err != nil {
			return nil, err
		}
		if a != "" {
			out = append(out, Pair{kv.Key, a})
		}
	}
	return out, nil
}
