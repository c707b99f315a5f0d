package link

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// rekeyShift: each direction moves to a new key every 2^rekeyShift frames
// (at most 64 GiB), so that the data sealed under one AES-GCM key stays
// far below its safety limits however long a link lives and however fast
// it goes.
const rekeyShift = 20

const rekeyInfo = "tandem link v1 next key"

// errCounterExhausted: 2^64 frames in one direction.
var errCounterExhausted = errors.New("frame counter exhausted")

// frameKey protects the frames of one direction: the AEAD of the current
// key and the frame counter, which is the nonce. Both ends count frames,
// so they move to the next key (derived from the current one) together.
type frameKey struct {
	key   []byte // the current key; the next is derived from it
	aead  cipher.AEAD
	seq   uint64 // frames so far
	shift uint   // rekeyShift; smaller in tests
	nonce [12]byte
}

func newFrameKey(key []byte) (frameKey, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return frameKey{}, err
	}
	return frameKey{key: bytes.Clone(key), aead: aead, shift: rekeyShift}, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("link: cipher: %w", err)
	}
	return cipher.NewGCM(b)
}

// next sets k.aead and k.nonce for the next frame.
func (k *frameKey) next() error {
	if k.seq == math.MaxUint64 {
		return errCounterExhausted
	}
	if k.seq != 0 && k.seq&(1<<k.shift-1) == 0 {
		key, err := hkdf.Key(sha256.New, k.key, nil, rekeyInfo, len(k.key))
		if err != nil {
			return err
		}
		aead, err := newAEAD(key)
		if err != nil {
			return err
		}
		clear(k.key)
		k.key, k.aead = key, aead
	}
	binary.BigEndian.PutUint64(k.nonce[4:], k.seq)
	k.seq++
	return nil
}
