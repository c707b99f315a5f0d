package link

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func sampleClientHello() clientHello {
	m := clientHello{Version: version, Purpose: PurposeReplication, Flags: flagInsecure, Name: "node-a"}
	for i := range m.Nonce {
		m.Nonce[i] = byte(i)
	}
	return m
}

func sampleServerHello() serverHello {
	m := serverHello{Version: version, Status: statusOK, Name: "node-b"}
	for i := range m.Nonce {
		m.Nonce[i] = byte(100 + i)
	}
	for i := range m.MAC {
		m.MAC[i] = byte(200 + i)
	}
	return m
}

func marshalServerHello(m serverHello) []byte { return append(m.appendMarshal(nil), m.MAC[:]...) }

func TestParseClientHello(t *testing.T) {
	good := sampleClientHello()
	enc := good.appendMarshal(nil)
	long := good
	long.Name = strings.Repeat("n", MaxNameLen)
	tooLong := append(enc[:helloFixed-1:helloFixed-1], MaxNameLen+1)
	badUTF8 := append(enc[:helloFixed-1:helloFixed-1], 2, 0xff, 0xfe)
	tests := []struct {
		name  string
		in    []byte
		want  clientHello
		n     int
		err   error
		extra int // bytes after the message, left alone
	}{
		{"hello", enc, good, len(enc), nil, 0},
		{"hello and more", append(bytes.Clone(enc), 1, 2, 3), good, len(enc), nil, 3},
		{"longest name", long.appendMarshal(nil), long, helloFixed + MaxNameLen, nil, 0},
		{"empty", nil, clientHello{}, helloFixed, errShort, 0},
		{"magic only", []byte(magic), clientHello{}, helloFixed, errShort, 0},
		{"fixed part only", enc[:helloFixed], clientHello{}, len(enc), errShort, 0},
		{"name cut", enc[:len(enc)-1], clientHello{}, len(enc), errShort, 0},
		{"bad first byte", []byte("G"), clientHello{}, 0, ErrNotLink, 0},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), clientHello{}, 0, ErrNotLink, 0},
		{"frame length", []byte{0xff, 0xff, 0xff, 0xff}, clientHello{}, 0, ErrNotLink, 0},
		{"name too long", tooLong, clientHello{}, 0, ErrHandshake, 0},
		{"name not UTF-8", badUTF8, clientHello{}, 0, ErrHandshake, 0},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%d_%s", i, tt.name), func(t *testing.T) {
			got, n, err := parseClientHello(tt.in)
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if n != tt.n {
				t.Fatalf("n = %d, want %d", n, tt.n)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseServerHello(t *testing.T) {
	good := sampleServerHello()
	enc := marshalServerHello(good)
	refusal := serverHello{Version: 7, Status: statusVersion}
	tests := []struct {
		name string
		in   []byte
		want serverHello
		n    int
		err  error
	}{
		{"hello", enc, good, len(enc), nil},
		{"refusal", marshalServerHello(refusal), refusal, helloFixed + macLen, nil},
		{"MAC cut", enc[:len(enc)-1], serverHello{}, len(enc), errShort},
		{"fixed part only", enc[:helloFixed], serverHello{}, len(enc), errShort},
		{"not a link", []byte("SSH-2.0-OpenSSH\r\n"), serverHello{}, 0, ErrNotLink},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%d_%s", i, tt.name), func(t *testing.T) {
			got, n, err := parseServerHello(tt.in)
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if n != tt.n {
				t.Fatalf("n = %d, want %d", n, tt.n)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseFinishAndResult(t *testing.T) {
	f := finish{Status: statusOK}
	f.MAC[0], f.MAC[31] = 1, 2
	enc := f.appendMarshal(nil)
	if got, n, err := parseFinish(enc); err != nil || n != finishLen || got != f {
		t.Fatalf("parseFinish = %+v, %d, %v", got, n, err)
	}
	if _, n, err := parseFinish(enc[:finishLen-1]); !errors.Is(err, errShort) || n != finishLen {
		t.Fatalf("parseFinish(short) = %d, %v", n, err)
	}
	if s, n, err := parseResult([]byte{statusAuth, 9}); err != nil || n != 1 || s != statusAuth {
		t.Fatalf("parseResult = %d, %d, %v", s, n, err)
	}
	if _, n, err := parseResult(nil); !errors.Is(err, errShort) || n != 1 {
		t.Fatalf("parseResult(nil) = %d, %v", n, err)
	}
}

// FuzzParse: the handshake parsers never panic, never ask for more than
// the longest message, and what they accept re-encodes to the same bytes.
func FuzzParse(f *testing.F) {
	ch, sh := sampleClientHello(), sampleServerHello()
	fin := finish{Status: statusAuth}
	for _, s := range [][]byte{ch.appendMarshal(nil), marshalServerHello(sh), fin.appendMarshal(nil), []byte(magic), {}, []byte("GET /")} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(what string, n int, err error, reencode func() []byte) {
			switch {
			case errors.Is(err, errShort):
				if n <= len(b) || n > maxHelloLen {
					t.Fatalf("%s: short, needs %d of %d bytes (max %d)", what, n, len(b), maxHelloLen)
				}
			case err != nil:
			case n > len(b) || n > maxHelloLen:
				t.Fatalf("%s: took %d of %d bytes", what, n, len(b))
			case reencode != nil && !bytes.Equal(reencode(), b[:n]):
				t.Fatalf("%s: re-encodes to %x, want %x", what, reencode(), b[:n])
			}
		}
		m1, n, err := parseClientHello(b)
		check("client hello", n, err, func() []byte { return m1.appendMarshal(nil) })
		m2, n, err := parseServerHello(b)
		check("server hello", n, err, func() []byte { return marshalServerHello(m2) })
		m3, n, err := parseFinish(b)
		check("finish", n, err, func() []byte { return m3.appendMarshal(nil) })
		_, n, err = parseResult(b)
		check("result", n, err, nil)
	})
}

// FuzzServerHandshake feeds arbitrary client bytes to the server side: it
// never panics, never authenticates without the key, and never sends more
// than its hello and a result.
func FuzzServerHandshake(f *testing.F) {
	ch := sampleClientHello()
	hello := ch.appendMarshal(nil)
	fin := finish{Status: statusOK}
	f.Add(hello)
	f.Add(append(bytes.Clone(hello), fin.appendMarshal(nil)...))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	cfg := Config{Key: testKey(1), Name: "server"}
	f.Fuzz(func(t *testing.T, b []byte) {
		fc := &fakeConn{r: bytes.NewReader(b)}
		c, err := serverHandshake(fc, &cfg, func(p Purpose) bool { return p.valid() })
		if err == nil {
			t.Fatalf("authenticated %q without the key", c.Peer())
		}
		if fc.w.Len() > maxHelloLen+resultLen {
			t.Fatalf("server sent %d bytes", fc.w.Len())
		}
	})
}

// FuzzClientHandshake feeds arbitrary server bytes to the client side: it
// never panics, never authenticates without the key, and sends nothing but
// its hello and finish.
func FuzzClientHandshake(f *testing.F) {
	f.Add(marshalServerHello(sampleServerHello()))
	f.Add(append(marshalServerHello(sampleServerHello()), statusOK))
	f.Add(marshalServerHello(serverHello{Version: 2, Status: statusVersion}))
	cfg := Config{Key: testKey(1), Name: "client"}
	f.Fuzz(func(t *testing.T, b []byte) {
		fc := &fakeConn{r: bytes.NewReader(b)}
		c, err := clientHandshake(fc, PurposeRPC, &cfg)
		if err == nil {
			t.Fatalf("authenticated %q without the key", c.Peer())
		}
		if fc.w.Len() > helloFixed+len(cfg.Name)+finishLen {
			t.Fatalf("client sent %d bytes", fc.w.Len())
		}
	})
}

// sealFrames returns the frames a writer with key k sends for each write.
func sealFrames(t testing.TB, k []byte, writes ...[]byte) [][]byte {
	fc := &fakeConn{r: eofReader{}}
	w, err := newConn(fc, newReader(fc), "w", PurposeRPC, false, k, k)
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	for _, p := range writes {
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
		frames = append(frames, bytes.Clone(fc.w.Bytes()))
		fc.w.Reset()
	}
	return frames
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// newReaderConn returns a Conn reading the frames in stream with key k.
func newReaderConn(t testing.TB, k []byte, stream io.Reader) (*Conn, *fakeConn) {
	fc := &fakeConn{r: stream}
	c, err := newConn(fc, newReader(fc), "r", PurposeRPC, false, k, k)
	if err != nil {
		t.Fatal(err)
	}
	return c, fc
}

// FuzzFrames feeds arbitrary bytes to the frame reader: it never panics,
// never returns more bytes than it was given, and ends in an error.
func FuzzFrames(f *testing.F) {
	k := testKey(3).Derive("frames", 32)
	frames := sealFrames(f, k, []byte("hello"), nil, bytes.Repeat([]byte{7}, 300))
	f.Add(bytes.Join(frames, nil))
	f.Add(frames[0])
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, fc := newReaderConn(t, k, bytes.NewReader(b))
		buf := make([]byte, 100)
		total := 0
		for i := 0; ; i++ {
			n, err := c.Read(buf[:1+i%len(buf)])
			total += n
			if total > len(b) {
				t.Fatalf("read %d bytes from %d", total, len(b))
			}
			if err != nil {
				if errorsIsAny(err, ErrFrameAuth, ErrFrameSize) && !fc.closed {
					t.Fatal("connection not closed after a bad frame")
				}
				return
			}
		}
	})
}
