package link

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

func TestParseKey(t *testing.T) {
	k := testKey(1)
	hexKey := hex.EncodeToString(k[:])
	tests := []struct {
		name string
		in   string
		want Key
		err  string
	}{
		{"encoded", string(k.Encode()), k, ""},
		{"bare", hexKey, k, ""},
		{"upper case", strings.ToUpper(hexKey), k, ""},
		{"white space", "  \t" + hexKey + "\r\n\n", k, ""},
		{"empty", "", Key{}, "want 64 hex digits, got 0 characters"},
		{"short", hexKey[:62], Key{}, "got 62 characters"},
		{"long", hexKey + "00", Key{}, "got 66 characters"},
		{"inner space", hexKey[:30] + " " + hexKey[31:], Key{}, "found another character"},
		{"not hex", "zz" + hexKey[2:], Key{}, "found another character"},
		{"zero", strings.Repeat("0", 64), Key{}, "all zeros"},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%d_%s", i, tt.name), func(t *testing.T) {
			got, err := ParseKey([]byte(tt.in))
			if tt.err != "" {
				if err == nil {
					t.Fatalf("ParseKey succeeded, want error %q", tt.err)
				}
				mustContain(t, err.Error(), tt.err)
				if tt.in != "" && strings.Contains(err.Error(), strings.TrimSpace(tt.in)) {
					t.Fatalf("error %q quotes the key file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("ParseKey = %x, want %x", got[:], tt.want[:])
			}
		})
	}
}

func TestNewKeyEncodeRoundTrip(t *testing.T) {
	a, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if a == b || a == (Key{}) {
		t.Fatalf("NewKey gave %x and %x", a[:], b[:])
	}
	enc := a.Encode()
	if len(enc) != 65 || enc[64] != '\n' {
		t.Fatalf("Encode = %q, want 64 hex digits and a newline", enc)
	}
	got, err := ParseKey(enc)
	if err != nil || got != a {
		t.Fatalf("ParseKey(Encode()) = %x, %v; want %x", got[:], err, a[:])
	}
}

func TestDerive(t *testing.T) {
	k := testKey(1)
	m := k.Derive("tandem memberlist", 32)
	if len(m) != 32 {
		t.Fatalf("Derive length %d, want 32", len(m))
	}
	if !bytes.Equal(m, k.Derive("tandem memberlist", 32)) {
		t.Fatal("Derive is not deterministic")
	}
	if len(k.Derive("x", 100)) != 100 {
		t.Fatal("Derive(100) has the wrong length")
	}
	other := testKey(2)
	for _, d := range [][]byte{
		k.Derive("tandem memberlist2", 32),
		other.Derive("tandem memberlist", 32),
		k[:],
		// This package's own keys are out of Derive's reach, whatever the label.
		k.Derive(macKeyInfo, 32),
	} {
		if bytes.Equal(d, m) {
			t.Fatalf("two derivations gave the same %x", d)
		}
	}
	if bytes.Equal(k.Derive(macKeyInfo, 32), newKeySchedule(k).macKey) {
		t.Fatal("Derive(macKeyInfo) returns the handshake MAC key")
	}
}

func TestKeyNotPrinted(t *testing.T) {
	k := testKey(0xa0)
	s := fmt.Sprintf("%v %s %x %X %q %#v %+v %v", k, k, k, k, k, k, Config{Key: k}, &Config{Key: k})
	for _, leak := range []string{hex.EncodeToString(k[:4]), strings.ToUpper(hex.EncodeToString(k[:4])), fmt.Sprint(k[0], " ", k[1])} {
		if strings.Contains(s, leak) {
			t.Fatalf("printing a key shows it: %s", s)
		}
	}
}
