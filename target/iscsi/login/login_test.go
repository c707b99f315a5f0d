package login

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func text(kv ...string) []byte { return []byte(strings.Join(kv, "\x00") + "\x00") }

func TestParseText(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want []Pair
		ok   bool
	}{
		{"1 empty", nil, nil, true},
		{"2 one pair", text("A=b"), []Pair{{"A", "b"}}, true},
		{"3 padding", append(text("A=b", "C="), 0, 0, 0), []Pair{{"A", "b"}, {"C", ""}}, true},
		{"4 no terminator", []byte("A=b"), nil, false},
		{"5 no equals", text("Ab"), nil, false},
		{"6 empty key", text("=b"), nil, false},
		{"7 long key", text(strings.Repeat("k", 64) + "=v"), nil, false},
		{"8 bad key char", text("A b=c"), nil, false},
		{"9 long value", text("A=" + strings.Repeat("v", 8193)), nil, false},
		{"10 invalid utf8", append([]byte("A=\xff"), 0), nil, false},
		{"11 value with equals", text("A=b=c"), []Pair{{"A", "b=c"}}, true},
	}
	for _, tc := range tests {
		got, err := ParseText(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v", tc.name, err)
			continue
		}
		if tc.ok && len(got) != len(tc.want) {
			t.Errorf("%s: got %v want %v", tc.name, got, tc.want)
			continue
		}
		for i := range got {
			if tc.ok && got[i] != tc.want[i] {
				t.Errorf("%s: got %v want %v", tc.name, got, tc.want)
			}
		}
		if tc.ok {
			if again, _ := ParseText(AppendText(nil, got)); len(again) != len(got) {
				t.Errorf("%s: round trip differs", tc.name)
			}
		}
	}
}

// fixedRand makes CHAP challenges predictable.
type fixedRand byte

func (f fixedRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(f) + byte(i)
	}
	return len(p), nil
}

const iqn = "iqn.2026-11.io.tandem:v"

func machine(auth Auth) *Machine { return machineFor(TargetInfo{Name: iqn, Auth: auth}) }

func machineFor(target TargetInfo) *Machine {
	return New(Config{Rand: fixedRand(7), PortalGroupTag: 3, Lookup: func(name string) (TargetInfo, bool) {
		if name != iqn {
			return TargetInfo{}, false
		}
		return target, true
	}})
}

func pairs(t *testing.T, b []byte) map[string]string {
	t.Helper()
	p, err := ParseText(b)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, kv := range p {
		m[kv.Key] = kv.Value
	}
	return m
}

func op(transit bool, nsg Stage, kv ...string) Request {
	return Request{Transit: transit, CSG: StageOperational, NSG: nsg, Text: text(kv...)}
}

func TestLoginStatus(t *testing.T) {
	chap := Auth{CHAPUser: "u", CHAPSecret: "secret-123456"}
	tests := []struct {
		name          string
		auth          Auth
		req           Request
		class, detail uint8
		done          bool
	}{
		{"1 normal no auth", Auth{}, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn), 0, 0, true},
		{"2 missing initiator name", Auth{}, op(true, 3, "TargetName="+iqn), 2, 7, false},
		{"3 missing target name", Auth{}, op(true, 3, "InitiatorName=iqn.x"), 2, 7, false},
		{"4 unknown target", Auth{}, op(true, 3, "InitiatorName=iqn.x", "TargetName=iqn.nope"), 2, 3, false},
		{"5 discovery", Auth{}, op(true, 3, "InitiatorName=iqn.x", "SessionType=Discovery"), 0, 0, true},
		{"6 bad session type", Auth{}, op(true, 3, "InitiatorName=iqn.x", "SessionType=Weird"), 2, 9, false},
		{"7 chap required but skipped", chap, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn), 2, 1, false},
		{"8 not allowed", Auth{AllowedInitiators: []string{"iqn.other"}}, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn), 2, 2, false},
		{"9 allowed any case", Auth{AllowedInitiators: []string{"IQN.X"}}, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn), 0, 0, true},
		{"10 version", Auth{}, Request{VersionMin: 1, CSG: 1, Text: text("InitiatorName=iqn.x")}, 2, 5, false},
		{"11 csg full feature", Auth{}, Request{CSG: 3, Text: text("InitiatorName=iqn.x")}, 2, 0x0b, false},
		{"12 transit backwards", Auth{}, Request{Transit: true, CSG: 1, NSG: 0, Text: text("InitiatorName=iqn.x")}, 2, 0, false},
		{"13 duplicate key", Auth{}, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn, "MaxBurstLength=512", "MaxBurstLength=1024"), 2, 0, false},
		{"14 malformed text", Auth{}, Request{CSG: 1, Text: []byte("garbage")}, 2, 0, false},
		{"15 security key in operational", Auth{}, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn, "CHAP_A=5"), 2, 0, false},
		// A target whose volume cannot be served: Service Unavailable,
		// after the allow list (which still answers first).
		{"16 unavailable", Auth{}, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn, "X-unavailable=1"), 3, 1, false},
		{"17 unavailable, not allowed", Auth{AllowedInitiators: []string{"iqn.other"}}, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn, "X-unavailable=1"), 2, 2, false},
		{"18 discovery with an unavailable target", Auth{}, op(true, 3, "InitiatorName=iqn.x", "SessionType=Discovery", "X-unavailable=1"), 0, 0, true},
		// A target another node serves now: Target Moved Temporarily with
		// its address, after the allow list, before any CHAP.
		{"19 redirected", chap, op(false, 0, "InitiatorName=iqn.x", "TargetName="+iqn, "AuthMethod=CHAP", "X-redirect=1"), 1, 1, false},
		{"20 redirected, not allowed", Auth{AllowedInitiators: []string{"iqn.other"}}, op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn, "X-redirect=1"), 2, 2, false},
	}
	for _, tc := range tests {
		redirect := ""
		if strings.Contains(string(tc.req.Text), "X-redirect") {
			redirect = "127.0.0.2:3260,1"
		}
		m := machineFor(TargetInfo{Name: iqn, Auth: tc.auth, Unavailable: strings.Contains(string(tc.req.Text), "X-unavailable"), Redirect: redirect})
		r := m.Step(tc.req)
		if got := pairs(t, r.Text)["TargetAddress"]; (tc.class == 1) != (got == redirect && got != "") {
			t.Errorf("%s: TargetAddress %q", tc.name, got)
		}
		if r.StatusClass != tc.class || r.StatusDetail != tc.detail || m.Done() != tc.done {
			t.Errorf("%s: status %d/%d done %v, want %d/%d done %v", tc.name, r.StatusClass, r.StatusDetail, m.Done(), tc.class, tc.detail, tc.done)
		}
		if (tc.class != 0) != m.Failed() {
			t.Errorf("%s: Failed()=%v", tc.name, m.Failed())
		}
	}
}

func TestNegotiation(t *testing.T) {
	m := machine(Auth{})
	r := m.Step(op(true, 3, "InitiatorName=iqn.x", "TargetName="+iqn,
		"HeaderDigest=CRC32C,None", "DataDigest=None", "MaxRecvDataSegmentLength=65536",
		"MaxBurstLength=1048576", "FirstBurstLength=99999999", "InitialR2T=No", "ImmediateData=Yes",
		"MaxOutstandingR2T=64", "ErrorRecoveryLevel=2", "MaxConnections=4", "DefaultTime2Wait=5",
		"DefaultTime2Retain=30", "IFMarker=No", "OFMarkInt=2048", "X-com.example.foo=1", "Unknown=1",
		"DataPDUInOrder=No"))
	got := pairs(t, r.Text)
	want := map[string]string{
		"HeaderDigest": "CRC32C", "DataDigest": "None", "MaxBurstLength": "1048576", "FirstBurstLength": "Reject",
		"InitialR2T": "No", "ImmediateData": "Yes", "MaxOutstandingR2T": "32", "ErrorRecoveryLevel": "0",
		"MaxConnections": "1", "DefaultTime2Wait": "5", "DefaultTime2Retain": "0", "IFMarker": "No",
		"OFMarkInt": "Irrelevant", "X-com.example.foo": "NotUnderstood", "Unknown": "NotUnderstood",
		"DataPDUInOrder": "Yes", "TargetPortalGroupTag": "3", "MaxRecvDataSegmentLength": "262144",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s=%q, want %q", k, got[k], v)
		}
	}
	p := m.Result().Params
	if !p.HeaderDigest || p.DataDigest || p.MaxRecvDataSegmentLength != 65536 || p.MaxBurstLength != 1048576 ||
		p.FirstBurstLength != 65536 || p.InitialR2T || !p.ImmediateData || p.MaxOutstandingR2T != 32 {
		t.Errorf("params %+v", p)
	}
	if !m.Done() {
		t.Fatal("not done")
	}
}

func TestDiscoveryIrrelevantKeys(t *testing.T) {
	m := machine(Auth{})
	r := m.Step(op(true, 3, "InitiatorName=iqn.x", "SessionType=Discovery", "InitialR2T=No", "HeaderDigest=None"))
	got := pairs(t, r.Text)
	if got["InitialR2T"] != "Irrelevant" || got["HeaderDigest"] != "None" || got["TargetPortalGroupTag"] != "" {
		t.Fatalf("%v", got)
	}
}

func md5Response(id byte, secret string, c []byte) string {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(c)
	return "0x" + hex.EncodeToString(h.Sum(nil))
}

// chapLogin runs the security stage with CHAP_A=alg; respond computes
// CHAP_R from the target's CHAP_I and CHAP_C.
func chapLogin(t *testing.T, m *Machine, alg string, extra ...string) (Response, map[string]string) {
	t.Helper()
	r := m.Step(Request{CSG: 0, Transit: true, NSG: 1, Text: text("InitiatorName=iqn.x", "TargetName="+iqn, "AuthMethod=CHAP,None")})
	if got := pairs(t, r.Text); got["AuthMethod"] != "CHAP" || r.Transit {
		t.Fatalf("AuthMethod answer %v transit %v", got, r.Transit)
	}
	r = m.Step(Request{CSG: 0, Text: text("CHAP_A=" + alg)})
	return r, pairs(t, r.Text)
}

func TestCHAP(t *testing.T) {
	auth := Auth{CHAPUser: "alice", CHAPSecret: "alice-secret-1", MutualUser: "tgt", MutualSecret: "target-secret-2"}
	tests := []struct {
		name   string
		user   string
		secret string
		mutual []string
		ok     bool
	}{
		{"1 right", "alice", "alice-secret-1", nil, true},
		{"2 wrong secret", "alice", "wrong-secret-99", nil, false},
		{"3 wrong user", "bob", "alice-secret-1", nil, false},
		{"4 mutual", "alice", "alice-secret-1", []string{"CHAP_I=9", "CHAP_C=0x0102030405060708090a0b0c0d0e0f10"}, true},
		{"5 mutual bad id", "alice", "alice-secret-1", []string{"CHAP_I=999", "CHAP_C=0x01020304"}, false},
		{"6 mutual bad challenge", "alice", "alice-secret-1", []string{"CHAP_I=9", "CHAP_C=zz"}, false},
		{"7 mutual half", "alice", "alice-secret-1", []string{"CHAP_I=9"}, false},
	}
	for _, tc := range tests {
		m := machine(auth)
		_, ch := chapLogin(t, m, "5")
		if ch["CHAP_A"] != "5" || ch["CHAP_I"] == "" || !strings.HasPrefix(ch["CHAP_C"], "0x") {
			t.Fatalf("%s: challenge %v", tc.name, ch)
		}
		id, _ := parseCHAPID(ch["CHAP_I"])
		c, _ := decodeBinary(ch["CHAP_C"])
		kv := append([]string{"CHAP_N=" + tc.user, "CHAP_R=" + md5Response(id, tc.secret, c)}, tc.mutual...)
		r := m.Step(Request{CSG: 0, Transit: true, NSG: 1, Text: text(kv...)})
		if (r.StatusClass == 0) != tc.ok {
			t.Errorf("%s: status %d/%d", tc.name, r.StatusClass, r.StatusDetail)
			continue
		}
		if !tc.ok {
			if r.StatusClass != 2 || r.StatusDetail != 1 {
				t.Errorf("%s: want authentication failure, got %d/%d", tc.name, r.StatusClass, r.StatusDetail)
			}
			continue
		}
		if !r.Transit || r.NSG != StageOperational {
			t.Errorf("%s: no transit after CHAP", tc.name)
		}
		if tc.mutual != nil {
			got := pairs(t, r.Text)
			mc, _ := decodeBinary("0x0102030405060708090a0b0c0d0e0f10")
			if got["CHAP_N"] != "tgt" || got["CHAP_R"] != md5Response(9, "target-secret-2", mc) {
				t.Errorf("%s: mutual answer %v", tc.name, got)
			}
		}
		r = m.Step(op(true, 3))
		if !m.Done() || r.StatusClass != 0 {
			t.Errorf("%s: operational stage failed %d/%d", tc.name, r.StatusClass, r.StatusDetail)
		}
	}
}

func TestCHAPAlgorithms(t *testing.T) {
	auth := Auth{CHAPUser: "a", CHAPSecret: "secret-secret"}
	for _, alg := range []string{"7", "6", "8"} {
		m := machine(auth)
		_, ch := chapLogin(t, m, alg+",5")
		if ch["CHAP_A"] != alg {
			t.Fatalf("alg %s: chose %v", alg, ch["CHAP_A"])
		}
		id, _ := parseCHAPID(ch["CHAP_I"])
		c, _ := decodeBinary(ch["CHAP_C"])
		resp := "0b" + encodeBase64(chapResponse(alg, id, "secret-secret", c))
		r := m.Step(Request{CSG: 0, Transit: true, NSG: 1, Text: text("CHAP_N=a", "CHAP_R="+resp)})
		if r.StatusClass != 0 {
			t.Fatalf("alg %s: %d/%d", alg, r.StatusClass, r.StatusDetail)
		}
	}
	// SHA-256 computed independently.
	h := sha256.Sum256(append(append([]byte{1}, "s"...), 2))
	if !bytes.Equal(chapResponse("7", 1, "s", []byte{2}), h[:]) {
		t.Fatal("sha-256 response differs")
	}
	m := machine(auth)
	r, _ := chapLogin(t, m, "99")
	if r.StatusClass != 2 || r.StatusDetail != 1 {
		t.Fatalf("unsupported algorithm accepted: %d/%d", r.StatusClass, r.StatusDetail)
	}
}

func TestCHAPReflectionRefused(t *testing.T) {
	m := machine(Auth{CHAPUser: "a", CHAPSecret: "secret-secret", MutualUser: "t", MutualSecret: "target-secret"})
	_, ch := chapLogin(t, m, "5")
	id, _ := parseCHAPID(ch["CHAP_I"])
	c, _ := decodeBinary(ch["CHAP_C"])
	r := m.Step(Request{CSG: 0, Transit: true, NSG: 1, Text: text("CHAP_N=a", "CHAP_R="+md5Response(id, "secret-secret", c),
		"CHAP_I=1", "CHAP_C="+ch["CHAP_C"])})
	if r.StatusClass != 2 || r.StatusDetail != 1 {
		t.Fatalf("reflected challenge accepted: %d/%d", r.StatusClass, r.StatusDetail)
	}
}

func TestNegotiateFullFeature(t *testing.T) {
	p := DefaultParams()
	out, err := NegotiateFullFeature(&p, []Pair{{"MaxRecvDataSegmentLength", "16384"}, {"MaxBurstLength", "512"}, {"Foo", "1"}})
	if err != nil || p.MaxRecvDataSegmentLength != 16384 {
		t.Fatalf("%v %+v", err, p)
	}
	if len(out) != 2 || out[0].Value != "Reject" || out[1].Value != "NotUnderstood" {
		t.Fatalf("%v", out)
	}
	if _, err := NegotiateFullFeature(&p, []Pair{{"MaxRecvDataSegmentLength", "1"}}); err == nil {
		t.Fatal("out of range MRDSL accepted")
	}
}

func FuzzParseText(f *testing.F) {
	f.Add(text("InitiatorName=iqn.x", "TargetName=iqn.y"))
	f.Add([]byte("A=b\x00\x00\x00"))
	f.Add([]byte("=\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseText(b)
		if err != nil {
			return
		}
		again, err := ParseText(AppendText(nil, p))
		if err != nil || len(again) != len(p) {
			t.Fatalf("round trip: %v %v", err, again)
		}
	})
}

// FuzzMachine drives the login state machine with arbitrary requests.
func FuzzMachine(f *testing.F) {
	f.Add(uint8(0x81), text("InitiatorName=iqn.x", "TargetName="+iqn, "AuthMethod=CHAP"), []byte("CHAP_A=5\x00"), []byte("CHAP_N=u\x00CHAP_R=0x00\x00"))
	f.Add(uint8(0x87), text("InitiatorName=iqn.x", "SessionType=Discovery"), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, flags uint8, a, b, c []byte) {
		for _, auth := range []Auth{{}, {CHAPUser: "u", CHAPSecret: "secret-123456", MutualUser: "m", MutualSecret: "secret-654321"}} {
			m := machine(auth)
			for i, txt := range [][]byte{a, b, c} {
				req := Request{Transit: flags&(1<<i) != 0, CSG: Stage(flags >> 3 & 1), NSG: Stage(flags >> 4 & 3), Text: txt}
				r := m.Step(req)
				if r.StatusClass != 0 && !m.Failed() {
					t.Fatal("error status without Failed")
				}
				if m.Done() && m.Failed() {
					t.Fatal("done and failed")
				}
			}
		}
	})
}
