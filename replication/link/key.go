package link

import (
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Key is the cluster key: 32 random bytes every node of a cluster holds,
// stored as 64 hex digits (Encode, ParseKey). String and GoString never
// show it, so a Key printed or logged by mistake does not leak.
type Key [32]byte

// NewKey returns a random key.
func NewKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("link: new cluster key: %w", err)
	}
	return k, nil
}

// ParseKey reads a key file's content: 64 hex digits, surrounding white
// space ignored. The error never quotes the content.
func ParseKey(b []byte) (Key, error) {
	s := bytes.TrimSpace(b)
	if len(s) != 2*len(Key{}) {
		return Key{}, fmt.Errorf("link: cluster key: want %d hex digits, got %d characters", 2*len(Key{}), len(s))
	}
	var k Key
	if _, err := hex.Decode(k[:], s); err != nil {
		return Key{}, fmt.Errorf("link: cluster key: want %d hex digits, found another character", 2*len(Key{}))
	}
	if k == (Key{}) {
		return Key{}, fmt.Errorf("link: cluster key: all zeros")
	}
	return k, nil
}

// Encode returns the key file's content: hex and a newline.
func (k Key) Encode() []byte {
	b := make([]byte, 2*len(k)+1)
	hex.Encode(b, k[:])
	b[len(b)-1] = '\n'
	return b
}

// Derive returns n bytes derived from the key for one use, named by label
// (HKDF-SHA256, label as info), e.g. Derive("tandem memberlist", 32) for
// memberlist's SecretKey. Different labels give independent keys, and none
// of them is a key this package uses. It panics if n is not in
// 1..255*32 (a programmer error).
func (k Key) Derive(label string, n int) []byte {
	if n <= 0 {
		panic(fmt.Sprintf("link: Key.Derive: length %d", n))
	}
	out, err := hkdf.Key(sha256.New, k[:], nil, label, n)
	if err != nil {
		panic(fmt.Sprintf("link: Key.Derive: length %d: %v", n, err))
	}
	return out
}

// String hides the key.
func (k Key) String() string { return "link.Key(redacted)" }

// GoString hides the key.
func (k Key) GoString() string { return k.String() }
