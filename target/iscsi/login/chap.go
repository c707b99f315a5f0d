package login

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"
)

// CHAP algorithms (RFC 7143 §12.1.3 and the IANA PPP authentication
// algorithm numbers used by initiators that support more than MD5).
var chapAlgorithms = map[string]func() hash.Hash{
	"5": md5.New,
	"6": sha1.New,
	"7": sha256.New,
	"8": func() hash.Hash { return sha3.New256() },
}

// chapResponse is H(id || secret || challenge).
func chapResponse(alg string, id byte, secret string, challenge []byte) []byte {
	h := chapAlgorithms[alg]()
	h.Write([]byte{id})
	io.WriteString(h, secret)
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeBinary decodes a binary value: "0x"/"0X" hex or "0b"/"0B" base64.
func decodeBinary(v string) ([]byte, error) {
	if len(v) < 3 {
		return nil, fmt.Errorf("binary value %q too short", v)
	}
	switch v[:2] {
	case "0x", "0X":
		s := v[2:]
		if len(s)%2 == 1 {
			s = "0" + s
		}
		return hex.DecodeString(s)
	case "0b", "0B":
		return base64.StdEncoding.DecodeString(v[2:])
	}
	return nil, fmt.Errorf("binary value %q lacks a 0x or 0b prefix", truncate([]byte(v)))
}

func encodeHex(b []byte) string { return "0x" + hex.EncodeToString(b) }

// chooseAlgorithm picks the first algorithm of the initiator's list that we
// support.
func chooseAlgorithm(list string) (string, bool) {
	for _, a := range strings.Split(list, ",") {
		if _, ok := chapAlgorithms[a]; ok {
			return a, true
		}
	}
	return "", false
}

func parseCHAPID(v string) (byte, bool) {
	n, ok := parseNumber(v)
	if !ok || n > 255 {
		return 0, false
	}
	return byte(n), true
}

func encodeBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
