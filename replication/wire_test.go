package replication

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"
)

var wireSamples = []Message{
	&Hello{ID: 1, VolumeID: "vol-1", Epoch: 7},
	&Write{ID: 2, VolumeID: "vol-1", Epoch: 7, Off: 4096, Data: []byte("0123456789")},
	&Write{ID: 3, VolumeID: "v", Epoch: 1, Off: 0, FUA: true, Data: bytes.Repeat([]byte{0xab}, 4096)},
	&Unmap{ID: 4, VolumeID: "vol-1", Epoch: 7, Off: 1 << 20, Len: 1 << 30},
	&Flush{ID: 5, VolumeID: "vol-1", Epoch: 7},
	&Barrier{ID: 6, VolumeID: "vol-1", Epoch: 7, Op: []byte(`{"snapshot":"s1"}`)},
	&Checksums{ID: 7, VolumeID: "vol-1", Epoch: 7, Off: 0, Len: 16 << 20, RegionSize: 1 << 20},
	&Reply{ID: 8},
	&Reply{ID: 9, Status: StatusStaleEpoch, Message: "epoch 7 < 9", Epoch: 9},
	&Reply{ID: 10, Size: 1 << 40, Epoch: 7},
	&Reply{ID: 11, Sums: []Sum{{1, 2, 3}, {4, 5, 6}}},
}

func TestWireRoundTrip(t *testing.T) {
	for i, m := range wireSamples {
		b := m.AppendMarshal(nil)
		got, n, err := Parse(b)
		if err != nil || n != len(b) {
			t.Fatalf("%d: Parse(%T) = %v, %d of %d bytes", i, m, err, n, len(b))
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%d: decoded %+v, want %+v", i, got, m)
		}
		if again := got.AppendMarshal(nil); !bytes.Equal(again, b) {
			t.Errorf("%d: re-encoding differs", i)
		}
	}
}

// corrupt returns the encoding of m with fn applied to it.
func corrupt(m Message, fn func(b []byte) []byte) []byte {
	return fn(m.AppendMarshal(nil))
}

func TestWireRejects(t *testing.T) {
	put32 := func(at int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint32(b[at:], v); return b }
	}
	put64 := func(at int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint64(b[at:], v); return b }
	}
	set := func(at int, v byte) func([]byte) []byte {
		return func(b []byte) []byte { b[at] = v; return b }
	}
	hello := &Hello{ID: 1, VolumeID: "v", Epoch: 1}
	write := &Write{ID: 1, VolumeID: "v", Epoch: 1, Data: []byte("abcd")}
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		0:  {"short", []byte("TR\x01"), ErrMalformed},
		1:  {"magic", corrupt(hello, set(0, 'X')), ErrMalformed},
		2:  {"version", corrupt(hello, set(2, 2)), ErrMalformed},
		3:  {"kind 0", corrupt(hello, set(3, 0)), ErrMalformed},
		4:  {"kind 99", corrupt(hello, set(3, 99)), ErrMalformed},
		5:  {"reserved", corrupt(hello, set(15, 1)), ErrMalformed},
		6:  {"write too long", corrupt(write, put32(8, MaxVolumeIDLen+MaxWriteData+1)), ErrTooLong},
		7:  {"hello body too long", corrupt(hello, put32(8, 1<<20)), ErrTooLong},
		8:  {"text beyond body", corrupt(hello, func(b []byte) []byte { b[7] = 9; return b }), ErrMalformed},
		9:  {"empty volume ID", (&Flush{VolumeID: ""}).AppendMarshal(nil), ErrMalformed},
		10: {"FUA on hello", corrupt(hello, set(4, flagFUA)), ErrMalformed},
		11: {"unknown flag", corrupt(write, set(4, 2)), ErrMalformed},
		12: {"status on request", corrupt(hello, set(5, 1)), ErrMalformed},
		13: {"hello with offset", corrupt(hello, put64(32, 1)), ErrMalformed},
		14: {"write offset overflows", corrupt(write, put64(32, ^uint64(0)-1)), ErrMalformed},
		15: {"empty write", (&Write{VolumeID: "v"}).AppendMarshal(nil), ErrMalformed},
		16: {"empty unmap", (&Unmap{VolumeID: "v"}).AppendMarshal(nil), ErrMalformed},
		17: {"unmap overflows", (&Unmap{VolumeID: "v", Off: 1 << 63, Len: 1 << 63}).AppendMarshal(nil), ErrMalformed},
		18: {"empty barrier", (&Barrier{VolumeID: "v"}).AppendMarshal(nil), ErrMalformed},
		19: {"barrier too long", corrupt(&Barrier{VolumeID: "v", Op: []byte("x")}, put32(8, MaxVolumeIDLen+MaxOpLen+1)), ErrTooLong},
		20: {"zero region", (&Checksums{VolumeID: "v", Len: 1}).AppendMarshal(nil), ErrMalformed},
		21: {"huge region", (&Checksums{VolumeID: "v", Len: 1, RegionSize: MaxChecksumRegion + 1}).AppendMarshal(nil), ErrMalformed},
		22: {"too many checksums", (&Checksums{VolumeID: "v", Len: MaxChecksums*4096 + 1, RegionSize: 4096}).AppendMarshal(nil), ErrTooLong},
		23: {"reply status", (&Reply{Status: maxStatus + 1}).AppendMarshal(nil), ErrMalformed},
		24: {"reply sums not whole", corrupt(&Reply{Message: "abc"}, func(b []byte) []byte { b[7] = 1; return b }), ErrMalformed},
		25: {"reply message too long", corrupt(&Reply{}, func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[6:], MaxMessageLen+1)
			binary.BigEndian.PutUint32(b[8:], MaxMessageLen+1)
			return append(b, make([]byte, MaxMessageLen+1)...)
		}), ErrTooLong},
		26: {"reply with epoch", corrupt(&Reply{}, put64(24, 1)), ErrMalformed},
		27: {"truncated body", corrupt(write, func(b []byte) []byte { return b[:len(b)-1] }), ErrMalformed},
		28: {"flush with payload", corrupt(&Flush{VolumeID: "v"}, func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[8:], 2)
			return append(b, 0)
		}), ErrMalformed},
		29: {"write past int64", corrupt(write, put64(32, 1<<63-2)), ErrMalformed},
		30: {"unmap at a negative offset", (&Unmap{VolumeID: "v", Off: 1 << 63, Len: 1}).AppendMarshal(nil), ErrMalformed},
		31: {"checksums past int64", (&Checksums{VolumeID: "v", Off: 1<<63 - 1, Len: 2, RegionSize: 4096}).AppendMarshal(nil), ErrMalformed},
	}
	for i, c := range cases {
		if _, _, err := Parse(c.b); !errors.Is(err, c.want) {
			t.Errorf("%d %s: Parse = %v, want %v", i, c.name, err, c.want)
		}
	}
}

func TestReplyMessageCut(t *testing.T) {
	long := string(bytes.Repeat([]byte("x"), MaxMessageLen+10))
	m, _, err := Parse((&Reply{ID: 1, Status: StatusFailed, Message: long}).AppendMarshal(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.(*Reply).Message; len(got) != MaxMessageLen {
		t.Errorf("message of %d bytes, want %d", len(got), MaxMessageLen)
	}
}

func TestMessageReaderStream(t *testing.T) {
	var stream []byte
	for _, m := range wireSamples {
		stream = m.AppendMarshal(stream)
	}
	mr := messageReader{r: bufio.NewReader(bytes.NewReader(stream))}
	for i, want := range wireSamples {
		got, err := mr.read()
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%d: %+v, want %+v", i, got, want)
		}
	}
	if _, err := mr.read(); err != io.EOF {
		t.Errorf("after the last message: %v, want EOF", err)
	}
}

// FuzzParse decodes arbitrary streams: nothing may panic or allocate past
// the bounds, and what decodes re-encodes to the same bytes.
func FuzzParse(f *testing.F) {
	for _, m := range wireSamples {
		f.Add(m.AppendMarshal(nil))
	}
	f.Add(append(wireSamples[0].AppendMarshal(nil), wireSamples[1].AppendMarshal(nil)...))
	f.Fuzz(func(t *testing.T, p []byte) {
		for len(p) > 0 {
			m, n, err := Parse(p)
			if err != nil {
				return
			}
			if again := m.AppendMarshal(nil); !bytes.Equal(again, p[:n]) {
				t.Fatalf("%T re-encodes differently:\n% x\n% x", m, p[:n], again)
			}
			p = p[n:]
		}
	})
}
