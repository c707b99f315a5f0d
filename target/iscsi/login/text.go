// Package login is the deterministic core of iSCSI login (RFC 7143 §6, §12,
// §13): text-key parsing, operational parameter negotiation and CHAP. It has
// no sockets, goroutines or clock; the connection code reassembles Login
// Request PDUs, calls Machine.Step, and sends what it returns. That makes
// every negotiation rule testable with scripted requests.
package login

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Pair is one key=value text pair.
type Pair struct{ Key, Value string }

// Limits of text keys (RFC 7143 §6.1).
const (
	maxKeyLen   = 63
	maxValueLen = 8192
)

// ErrText wraps every text-key parse error.
var ErrText = errors.New("login: malformed text")

// ParseText splits a data segment of NUL-terminated key=value pairs. Zero
// padding after the last pair is allowed.
func ParseText(data []byte) ([]Pair, error) {
	// NULs after the terminator of the last pair are padding; a segment of
	// only NULs holds no pairs.
	end := len(data)
	for end > 0 && data[end-1] == 0 {
		end--
	}
	if end == 0 {
		return nil, nil
	}
	if end == len(data) {
		return nil, fmt.Errorf("%w: last pair not NUL-terminated", ErrText)
	}
	data = data[:end+1]
	var out []Pair
	for start := 0; start < len(data); {
		i := start
		for data[i] != 0 {
			i++
		}
		kv := data[start:i]
		start = i + 1
		eq := -1
		for j, b := range kv {
			if b == '=' {
				eq = j
				break
			}
		}
		if eq < 0 {
			return nil, fmt.Errorf("%w: %q has no '='", ErrText, truncate(kv))
		}
		key, value := kv[:eq], kv[eq+1:]
		if len(key) == 0 || len(key) > maxKeyLen {
			return nil, fmt.Errorf("%w: key length %d not in 1..%d", ErrText, len(key), maxKeyLen)
		}
		for _, b := range key {
			if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '.' || b == '-' || b == '+' || b == '@' || b == '_' || b == '#') {
				return nil, fmt.Errorf("%w: key %q has character %q", ErrText, truncate(key), b)
			}
		}
		if len(value) > maxValueLen {
			return nil, fmt.Errorf("%w: value of %s is %d bytes, limit %d", ErrText, key, len(value), maxValueLen)
		}
		if !utf8.Valid(value) {
			return nil, fmt.Errorf("%w: value of %s is not UTF-8", ErrText, key)
		}
		out = append(out, Pair{string(key), string(value)})
	}
	return out, nil
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// AppendText appends pairs in wire form.
func AppendText(b []byte, pairs []Pair) []byte {
	for _, p := range pairs {
		b = append(b, p.Key...)
		b = append(b, '=')
		b = append(b, p.Value...)
		b = append(b, 0)
	}
	return b
}
